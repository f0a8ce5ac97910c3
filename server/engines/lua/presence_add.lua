-- Add or refresh one presence entry: the hash holds the entry, the sorted set its expiry time; both keys live
-- as long as their newest entry, so a channel whose nodes all died disappears by itself.
-- KEYS[1] expiry zset, KEYS[2] data hash
-- ARGV[1] ttl (ms), ARGV[2] expires at (unix ms), ARGV[3] client id, ARGV[4] entry
redis.call("zadd", KEYS[1], ARGV[2], ARGV[3])
redis.call("hset", KEYS[2], ARGV[3], ARGV[4])
redis.call("pexpire", KEYS[1], ARGV[1])
redis.call("pexpire", KEYS[2], ARGV[1])
return 1
