-- Read a channel stream: its top position (creating the epoch when there is none yet, so that readers and
-- later publishers agree on it) and, unless the limit is 0, publications after (or, reversed, before) an offset.
-- KEYS[1] stream, KEYS[2] meta hash
-- ARGV[1] limit (-1 = all, 0 = position only), ARGV[2] first offset wanted (forward) or last (reverse), as a
-- stream id bound ("-" / "+" for none), ARGV[3] "1" = newest first, ARGV[4] meta ttl (ms, 0 = none),
-- ARGV[5] epoch to use when a new one is needed
local epoch = redis.call("hget", KEYS[2], "e")
if not epoch then
  epoch = ARGV[5]
  redis.call("hset", KEYS[2], "e", epoch)
  redis.call("del", KEYS[1])
end
if tonumber(ARGV[4]) > 0 then
  redis.call("pexpire", KEYS[2], ARGV[4])
end
local top = redis.call("hget", KEYS[2], "s") or "0"
local limit = tonumber(ARGV[1])
if limit == 0 then
  return {top, epoch, {}}
end
local command, other_end = "xrange", "+"
if ARGV[3] == "1" then
  command, other_end = "xrevrange", "-"
end
local entries
if limit > 0 then
  entries = redis.call(command, KEYS[1], ARGV[2], other_end, "COUNT", limit)
else
  entries = redis.call(command, KEYS[1], ARGV[2], other_end)
end
return {top, epoch, entries}
