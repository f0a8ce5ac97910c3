-- Publish into a channel stream, atomically: raise the offset, append to the history stream (trimmed to
-- MAXLEN, expiring after the history TTL) and PUBLISH to the channel's pub/sub channel with offset and epoch.
-- A missing meta hash (first publication, expired meta, Redis restarted empty) starts a new epoch and drops
-- any stale stream, so offsets restart at 1 in the new epoch.
-- KEYS[1] stream, KEYS[2] meta hash
-- ARGV[1] body, ARGV[2] history size, ARGV[3] history ttl (ms), ARGV[4] meta ttl (ms, 0 = none),
-- ARGV[5] epoch to use when a new one is needed, ARGV[6] pub/sub channel
local epoch = redis.call("hget", KEYS[2], "e")
if not epoch then
  epoch = ARGV[5]
  redis.call("hset", KEYS[2], "e", epoch)
  redis.call("del", KEYS[1])
end
local offset = redis.call("hincrby", KEYS[2], "s", 1)
if tonumber(ARGV[4]) > 0 then
  redis.call("pexpire", KEYS[2], ARGV[4])
end
redis.call("xadd", KEYS[1], "MAXLEN", ARGV[2], offset .. "-0", "d", ARGV[1])
redis.call("pexpire", KEYS[1], ARGV[3])
redis.call("publish", ARGV[6], "p" .. offset .. ":" .. epoch .. ":" .. ARGV[1])
return {offset, epoch}
