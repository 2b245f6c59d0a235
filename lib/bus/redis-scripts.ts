/**
 * The Lua scripts of the Redis bus. Each runs atomically on the server, so
 * XADD and PUBLISH of one event cannot interleave with another's: live order
 * on the channel equals id order in the stream. Needs Redis >= 7.0 (XINFO's
 * `max-deleted-entry-id`, XSETID's MAXDELETEDID).
 */
import { createHash } from 'node:crypto'

export interface Script {
  source: string
  sha: string
}

function script(source: string): Script {
  return { source, sha: createHash('sha1').update(source).digest('hex') }
}

/** Milliseconds of the server clock, the clock XADD uses for ids. */
const NOW = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`

/** Compare stream ids `ms-seq` numerically. */
const CMP = `
local function cmp(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  if am ~= bm then return am < bm and -1 or 1 end
  if as ~= bs then return as < bs and -1 or 1 end
  return 0
end
local function info(key)
  local r = redis.call('XINFO', 'STREAM', key)
  local out = {}
  for i = 1, #r, 2 do out[r[i]] = r[i + 1] end
  return out
end
`

/**
 * KEYS[1] stream. ARGV: channel, type ('' = gap marker only), data, message
 * tail (JSON of [type, data]), historySize, historyMaxAgeMs (0 = none),
 * idleTtlMs, gap ('1': first record that events were published here without
 * Redis, so recovery across that point is refused). Returns the event's id.
 */
export const PUBLISH = script(`${NOW}
local key = KEYS[1]
local size, maxAge, ttl = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local created = redis.call('EXISTS', key) == 0
local id
if ARGV[8] == '1' then
  id = redis.call('XADD', key, 'MAXLEN', '~', size, '*', 'g', '1')
  -- An empty tail is a gap notice: live nodes tell their clients to resync.
  redis.call('PUBLISH', ARGV[1], id .. '\\n')
end
if ARGV[2] ~= '' then id = redis.call('XADD', key, 'MAXLEN', '~', size, '*', 't', ARGV[2], 'd', ARGV[3]) end
if created then
  -- A stream of this name may have expired before: the new one vouches
  -- only for cursors younger than the idle expiry.
  local floor = math.max(0, now - ttl)
  redis.call('XSETID', key, id, 'ENTRIESADDED', redis.call('XLEN', key), 'MAXDELETEDID', string.format('%d-0', floor))
end
if maxAge > 0 then redis.call('XTRIM', key, 'MINID', '~', string.format('%d', math.max(0, now - maxAge))) end
redis.call('PEXPIRE', key, ttl)
if ARGV[2] ~= '' then redis.call('PUBLISH', ARGV[1], id .. '\\n' .. ARGV[4]) end
return id
`)

/**
 * KEYS[1] stream. ARGV: since (a valid stream id), idleTtlMs. Returns {0}
 * when history no longer reaches back to \`since\` (or it is from the
 * future), else {1, entries after since}.
 */
export const HISTORY = script(`${NOW}${CMP}
local key, since, ttl = KEYS[1], ARGV[1], tonumber(ARGV[2])
if redis.call('EXISTS', key) == 0 then
  -- Nothing stored: only a cursor younger than the idle expiry can be
  -- sure that nothing after it expired.
  local ms = tonumber(string.match(since, '^(%d+)-'))
  if ms > now - ttl and ms <= now then return {1, {}} end
  return {0}
end
local i = info(key)
local last = i['last-generated-id']
if cmp(since, last) > 0 or cmp(since, i['max-deleted-entry-id']) < 0 then return {0} end
-- Trimming does not move max-deleted-entry-id: if entries were ever
-- trimmed, a cursor before the first kept entry may have lost some (when it
-- is exactly the last trimmed one this resyncs needlessly, which is safe).
if tonumber(i['entries-added']) > tonumber(i['length']) then
  local first = i['first-entry']
  if not first then
    if cmp(since, last) < 0 then return {0} end
  elseif cmp(since, first[1]) < 0 then return {0} end
end
return {1, redis.call('XRANGE', key, '(' .. since, '+')}
`)

/** KEYS[1] stream. The id of its last event, or a cursor just before now when there is none. */
export const LATEST = script(`${NOW}${CMP}
if redis.call('EXISTS', KEYS[1]) == 1 then return info(KEYS[1])['last-generated-id'] end
return string.format('%d-0', now - 1)
`)
