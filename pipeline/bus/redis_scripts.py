"""The Lua scripts of `RedisBus`: each runs atomically on the server, in one round trip."""

# KEYS: the stream, its index stream. ARGV: limit (add only while the worst backlog is below it; 0: just measure),
# group to report, cap of the counts, then the entry's field/value pairs. Returns {id or nil, worst backlog, its
# group, backlog of the reported group, pending entries of the worst group}; with no group yet, every retained entry
# counts as backlog. The index (same ids, no payload) counts undelivered entries cheaply; a stream written before
# the index existed is counted directly until every group has caught up, and the index starts then.
APPEND_IF_ROOM = """
local stream, index = KEYS[1], KEYS[2]
local limit, probe, cap = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local function before(a, b)
  local a_ms, a_seq = string.match(a, '(%d+)-(%d+)')
  local b_ms, b_seq = string.match(b, '(%d+)-(%d+)')
  a_ms, b_ms = tonumber(a_ms), tonumber(b_ms)
  return a_ms < b_ms or (a_ms == b_ms and tonumber(a_seq) < tonumber(b_seq))
end
local length = redis.call('XLEN', stream)
local indexed = redis.call('EXISTS', index) == 1
local counted = indexed and index or stream
local ok, infos = pcall(redis.call, 'XINFO', 'GROUPS', stream)
if not ok then infos = {} end
local worst, worst_name, worst_pending, probed, keep_from = -1, false, 0, length, false
local caught_up = true
for _, info in ipairs(infos) do
  local group = {}
  for i = 1, #info, 2 do group[info[i]] = info[i + 1] end
  local undelivered = #redis.call('XRANGE', counted, '(' .. group['last-delivered-id'], '+', 'COUNT', cap)
  if undelivered > 0 then caught_up = false end
  local backlog = group['pending'] + undelivered
  if backlog > worst then worst, worst_name, worst_pending = backlog, group['name'], group['pending'] end
  if group['name'] == probe then probed = backlog end
  local needed = group['last-delivered-id']
  if group['pending'] > 0 then needed = redis.call('XPENDING', stream, group['name'])[2] end
  if not keep_from or before(needed, keep_from) then keep_from = needed end
end
if worst < 0 then worst = length end
local added = false
if limit > 0 and worst < limit then
  local args = {stream}
  if keep_from then args = {stream, 'MINID', '~', keep_from} end
  table.insert(args, '*')
  for i = 4, #ARGV do table.insert(args, ARGV[i]) end
  added = redis.call('XADD', unpack(args))
  if indexed or length == 0 or (#infos > 0 and caught_up) then
    local trim = keep_from and {index, 'MINID', keep_from, added, 'i', ''} or {index, added, 'i', ''}
    if not pcall(redis.call, 'XADD', unpack(trim)) then redis.call('DEL', index) end
  end
end
return {added, worst, worst_name, probed, worst_pending}
"""

# KEYS: the epoch key. ARGV: a fresh token. Returns {the stored token, 1 if it was just set}.
EPOCH = """
local current = redis.call('GET', KEYS[1])
if current then return {current, 0} end
redis.call('SET', KEYS[1], ARGV[1])
return {ARGV[1], 1}
"""
