"""Long-running pipeline workers (decoder, classifier, density, sink), each a thin loop around a library step."""
