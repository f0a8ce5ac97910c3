-- Drop expired presence entries (their node stopped refreshing them), then return the live ones.
-- KEYS[1] expiry zset, KEYS[2] data hash; ARGV[1] now (unix ms)
local expired = redis.call("zrangebyscore", KEYS[1], "-inf", ARGV[1])
if #expired > 0 then
  for i = 1, #expired, 1000 do
    redis.call("hdel", KEYS[2], unpack(expired, i, math.min(i + 999, #expired)))
  end
  redis.call("zremrangebyscore", KEYS[1], "-inf", ARGV[1])
end
return redis.call("hgetall", KEYS[2])
