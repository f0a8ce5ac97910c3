-- Remove one presence entry.
-- KEYS[1] expiry zset, KEYS[2] data hash; ARGV[1] client id
redis.call("zrem", KEYS[1], ARGV[1])
redis.call("hdel", KEYS[2], ARGV[1])
return 1
