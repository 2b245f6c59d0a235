/**
 * The Lua scripts of the Redis bus. Each runs atomically on the server, so
 * the XADD and the PUBLISH of one event cannot interleave with another's:
 * live order on the channel equals id order in the stream. Needs Redis >= 7.
 *
 * A stream's entries: a header `h` (its id and its value, a random nonce,
 * make the stream's *epoch*: `<id>.<nonce>`, unique even when a lost stream
 * is re-created within the same millisecond), events
 * `t` type, `d` data (JSON text), `e` epoch, and gap markers `g`, `e`. The
 * epoch lives in the stream itself, so it is lost together with it (a
 * restart without persistence, FLUSHALL, eviction, expiry): a re-created
 * stream has a new epoch, and a cursor of the old one can only get resync.
 *
 * Live messages carry the event's id, the id before it (`p`) and the epoch,
 * so a node can tell a hole in what it received from a clean sequence.
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

/** The stream's epoch and last entry id, or nil when it has none (missing, or trimmed empty). */
const EPOCH = `
local function epoch_of(key)
  local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)[1]
  if not last then return nil, nil end
  local f = last[2]
  for i = 1, #f, 2 do
    if f[i] == 'e' then return f[i + 1], last[1] end
    if f[i] == 'h' then return last[1] .. '.' .. f[i + 1], last[1] end
  end
  return nil, nil
end
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
`

/**
 * KEYS[1] stream. ARGV: channel, type ('' = gap marker only), data (JSON
 * text), historySize, historyMaxAgeMs (0 = none), idleTtlMs, gap ('1': first
 * record that events were delivered without Redis), deadline (server ms; 0 =
 * none), nonce (for a new epoch). Past the deadline it does nothing and returns {'expired'}: the
 * node timed out and delivered the event locally already, so a late run
 * must not deliver it a second time.
 * Returns {epoch, gapPrev, gapId, prev, id} ('' where absent).
 */
export const PUBLISH = script(`${NOW}${EPOCH}
local deadline = tonumber(ARGV[8])
if deadline > 0 and now > deadline then return {'expired'} end
local key, ch, size = KEYS[1], ARGV[1], ARGV[4]
local epoch, prev = epoch_of(key)
if not epoch then
  prev = redis.call('XADD', key, 'MAXLEN', '~', size, '*', 'h', ARGV[9])
  epoch = prev .. '.' .. ARGV[9]
end
local out = {epoch, '', '', '', ''}
if ARGV[7] == '1' then
  local g = redis.call('XADD', key, 'MAXLEN', '~', size, '*', 'g', '1', 'e', epoch)
  redis.call('PUBLISH', ch, '{"i":"' .. g .. '","p":"' .. prev .. '","e":"' .. epoch .. '","g":1}')
  out[2], out[3] = prev, g
  prev = g
end
if ARGV[2] ~= '' then
  local id = redis.call('XADD', key, 'MAXLEN', '~', size, '*', 't', ARGV[2], 'd', ARGV[3], 'e', epoch)
  redis.call('PUBLISH', ch, '{"i":"' .. id .. '","p":"' .. prev .. '","e":"' .. epoch .. '","t":' .. cjson.encode(ARGV[2]) .. ',"d":' .. ARGV[3] .. '}')
  out[4], out[5] = prev, id
end
local maxAge = tonumber(ARGV[5])
if maxAge > 0 then redis.call('XTRIM', key, 'MINID', '~', string.format('%d', math.max(0, now - maxAge))) end
redis.call('PEXPIRE', key, ARGV[6])
return out
`)

/**
 * KEYS[1] stream. ARGV: epoch, since (exclusive), upto (inclusive id, or '+').
 * Returns {0} when the stream cannot vouch for what came after `since`: it
 * is missing, of another epoch, `since` is ahead of it, or entries after
 * `since` may have been trimmed. Else {1, entries}.
 */
export const HISTORY = script(`${EPOCH}${CMP}
local key, epoch, since, upto = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local e = epoch_of(key)
if e ~= epoch then return {0} end
local r = redis.call('XINFO', 'STREAM', key)
local i = {}
for k = 1, #r, 2 do i[r[k]] = r[k + 1] end
if cmp(since, i['last-generated-id']) > 0 or cmp(since, string.match(epoch, '^[%d-]+')) < 0 then return {0} end
-- Entries were trimmed: a cursor before the first one kept may have lost
-- some (exactly at the last trimmed one it resyncs needlessly, which is safe).
if tonumber(i['entries-added']) > tonumber(i['length']) then
  local first = i['first-entry']
  if not first or cmp(since, first[1]) < 0 then return {0} end
end
return {1, redis.call('XRANGE', key, '(' .. since, upto)}
`)

/**
 * KEYS[1] stream. ARGV: historySize, idleTtlMs, nonce. The epoch and last id,
 * starting a new epoch (a header entry) when the stream has none, so every
 * cursor handed out names an epoch that can vouch for it.
 */
export const LATEST = script(`${EPOCH}
local key = KEYS[1]
local epoch, last = epoch_of(key)
if not epoch then
  last = redis.call('XADD', key, 'MAXLEN', '~', ARGV[1], '*', 'h', ARGV[3])
  epoch = last .. '.' .. ARGV[3]
  redis.call('PEXPIRE', key, ARGV[2])
end
return {epoch, last}
`)
