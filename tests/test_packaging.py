"""A non-editable install (what the Docker image's ``pip install .`` makes) carries and finds the shipped assets."""

import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SHIPPED = (
    "pipeline/assets/models/default/model.safetensors",
    "pipeline/assets/models/default-surrogate/model.safetensors",
    "pipeline/assets/bundles/default/bundle.json",
    "pipeline/assets/bundles/default/calibration.safetensors",
    "pipeline/assets/bundles/default/densities/arrays.safetensors",
    "pipeline/assets/bundles/default/digests.json",
    "pipeline/assets/models/default/digests.json",
    "pipeline/assets/frames/default.safetensors",
    "workers/decoder.py",
)


def test_wheel_carries_the_shipped_assets_and_an_installed_copy_uses_them(tmp_path):
    source = tmp_path / "source"  # a clean copy: no stale build/ output can slip into the wheel
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "runs", "*.egg-info", "__pycache__", ".pytest_cache"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    [wheel] = (tmp_path / "dist").glob("clipwatch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert not [path for path in SHIPPED if path not in names]
    assert not [name for name in names if name.endswith((".pkl", ".pt", ".pth"))]
    [entry_file] = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
    entries = zipfile.ZipFile(wheel).read(entry_file).decode()
    assert "[clipwatch.commands]" in entries  # run, worker and demo reach the CLI from the workers side
    assert all(f"{command} = workers.cli:register_{command}" in entries for command in ("run", "worker", "demo"))

    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    probe = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(target)!r})
        import pipeline
        assert pipeline.__file__.startswith({str(target)!r}), pipeline.__file__
        from pipeline.demo import DEFAULT_BUNDLE
        from pipeline.detect import DetectorBundle
        bundle = DetectorBundle.load(DEFAULT_BUNDLE)
        print(bundle.resolve_model(DEFAULT_BUNDLE))
    """)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(target / "pipeline" / "assets" / "models" / "default")
