-- Release the refresh lock of one credential, storing the new access token first if there is one.
--
-- KEYS[1]  "{ns}:auth:{name}": the shared access token (JSON: access_token, expires_at_ms,
--          lifetime_ms), living as long as the token does
-- KEYS[2]  "{ns}:auth:{name}:lock": the refresh lock, holding its owner's random id
-- ARGV[1]  the id this replica locked with
-- ARGV[2]  the new token's JSON, or "" when there is nothing to store (the refresh failed)
-- ARGV[3]  the token's remaining lifetime in ms
--
-- Both in one script, so no replica ever sees the lock gone and the old token still there (it
-- would refresh again). The token is stored even if the lock expired meanwhile: it is valid
-- either way. The lock is deleted only if it is still ours, so a slow holder never frees the lock
-- of a replica that took over. Returns 1 if the lock was ours, else 0.
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
