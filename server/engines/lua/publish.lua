-- Publish into a channel, atomically. With history (size > 0): raise the offset, append to the history stream
-- (trimmed to MAXLEN, expiring after the history TTL) and PUBLISH with offset and epoch. A missing meta hash
-- (first publication, expired meta, Redis restarted empty) starts a new epoch and drops any stale stream, so
-- offsets restart at 1 in the new epoch. Without history: PUBLISH with offset 0 and no epoch.
-- With an idempotency result key: a key that exists returns the first publication's position and publishes
-- nothing; otherwise the position is kept there for its TTL.
-- KEYS[1] stream, KEYS[2] meta hash, KEYS[3] idempotency result key (may be absent)
-- ARGV[1] body, ARGV[2] history size (0 = no history), ARGV[3] history ttl (ms), ARGV[4] meta ttl (ms, 0 = none),
-- ARGV[5] epoch to use when a new one is needed, ARGV[6] pub/sub channel, ARGV[7] idempotency ttl (ms)
if KEYS[3] then
  local seen = redis.call("hmget", KEYS[3], "o", "e")
  if seen[1] then
    return {tonumber(seen[1]), seen[2]}
  end
end
local offset, epoch = 0, ""
if tonumber(ARGV[2]) > 0 then
  epoch = redis.call("hget", KEYS[2], "e")
  if not epoch then
    epoch = ARGV[5]
    redis.call("hset", KEYS[2], "e", epoch)
    redis.call("del", KEYS[1])
  end
  offset = redis.call("hincrby", KEYS[2], "s", 1)
  if tonumber(ARGV[4]) > 0 then
    redis.call("pexpire", KEYS[2], ARGV[4])
  end
  redis.call("xadd", KEYS[1], "MAXLEN", ARGV[2], offset .. "-0", "d", ARGV[1])
  redis.call("pexpire", KEYS[1], ARGV[3])
end
redis.call("publish", ARGV[6], "p" .. offset .. ":" .. epoch .. ":" .. ARGV[1])
if KEYS[3] then
  redis.call("hset", KEYS[3], "o", offset, "e", epoch)
  redis.call("pexpire", KEYS[3], ARGV[7])
end
return {offset, epoch}
