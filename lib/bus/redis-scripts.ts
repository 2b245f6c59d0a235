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
import type { Liveness } from './redis-liveness'
import type { RedisConnectionLike } from './redis-options'

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
 * Was the stream rolled back: restored from an older RDB or AOF, or failed
 * over to a replica that was behind? Its header survived, so its epoch did,
 * but a node has seen ids of that epoch the stream no longer holds
 * (`hw`, its high-water mark, is past the stream's last-generated-id).
 * Events were lost between the snapshot and the fault, and cursors inside
 * that range would replay around a hole: the caller then starts a new
 * epoch (a header entry), which no old cursor matches, so every client of
 * the old one gets resync.
 */
const ROLLED_BACK = `
local function rolled_back(key, epoch, hwEpoch, hw)
  if hwEpoch ~= epoch or hw == nil or hw == '' then return false end
  local r = redis.call('XINFO', 'STREAM', key)
  for k = 1, #r, 2 do
    if r[k] == 'last-generated-id' then return cmp(hw, r[k + 1]) > 0 end
  end
  return false
end
`

/**
 * KEYS[1] stream. ARGV: epoch, high-water id, historySize, idleTtlMs, nonce.
 * A node that reconnected checks each topic it knows: a stream rolled back
 * behind its high-water mark gets a new epoch. Returns {epoch, last, began}
 * (`began` '1' when it started that epoch now) or {} when the stream has no epoch.
 */
export const CHECK = script(`${EPOCH}${CMP}${ROLLED_BACK}
local key = KEYS[1]
local epoch, last = epoch_of(key)
if not epoch then return {} end
if rolled_back(key, epoch, ARGV[1], ARGV[2]) then
  last = redis.call('XADD', key, 'MAXLEN', '~', ARGV[3], '*', 'h', ARGV[5])
  redis.call('PEXPIRE', key, ARGV[4])
  return {last .. '.' .. ARGV[5], last, '1'}
end
return {epoch, last, '0'}
`)

/**
 * KEYS[1] stream. ARGV: channel, type ('' = gap marker only), data (JSON
 * text), historySize, historyMaxAgeMs (0 = none), idleTtlMs, gap ('1': first
 * record that events were delivered without Redis), deadline (server ms; 0 =
 * none), nonce (for a new epoch), then the node's high-water mark: the
 * epoch and the newest id of it the node has seen ('' '' for none). Past the
 * deadline it does nothing and returns {'expired'}: the node timed out and
 * delivered the event locally already, so a late run must not deliver it a
 * second time. A stream behind the high-water mark was rolled back (see
 * ROLLED_BACK): a new epoch begins before the event.
 * Returns {epoch, gapPrev, gapId, prev, id} ('' where absent).
 */
export const PUBLISH = script(`${NOW}${EPOCH}${CMP}
local deadline = tonumber(ARGV[8])
if deadline > 0 and now > deadline then return {'expired'} end
local key, ch, size = KEYS[1], ARGV[1], ARGV[4]
local epoch, prev = epoch_of(key)
-- The newest entry stands for the stream's end (entries are trimmed from the
-- front, never deleted from the back): no XINFO on the hot path.
if epoch and ARGV[10] == epoch and ARGV[11] ~= '' and cmp(ARGV[11], prev) > 0 then epoch = nil end
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

/** Where a topic lives in Redis, and the scripts run on it, each once there is room in flight (see Liveness.send). */
export class Scripts {
  constructor(private readonly cmd: () => RedisConnectionLike, private readonly live: Liveness, private readonly keyPrefix: string) {}

  stream(topic: string): string {
    return `${this.keyPrefix}stream:${topic}`
  }

  channel(topic: string): string {
    return `${this.keyPrefix}live:${topic}`
  }

  /** The topic of a channel of `channel()`. */
  topic(channel: string): string {
    return channel.slice(this.channel('').length)
  }

  /**
   * `args` as a function: made when the command is sent (a deadline counts
   * from then). A script Redis does not know yet (a fresh or restarted
   * Redis) is sent again in full within the same slot, so it keeps its place:
   * re-queued, the first publishes after a restart would reach the stream
   * behind later ones.
   */
  run(s: Script, topic: string, args: string[] | (() => string[])): Promise<unknown> {
    // Made per attempt: the script did not run on NOSCRIPT, and the resend's deadline counts from the resend.
    const tail = (): string[] => ['1', this.stream(topic), ...(typeof args === 'function' ? args() : args)]
    return this.live.send(async (timed) => {
      try {
        return await timed(this.cmd().sendCommand(['EVALSHA', s.sha, ...tail()]))
      } catch (err) {
        if (!String((err as Error).message).startsWith('NOSCRIPT')) throw err
        return timed(this.cmd().sendCommand(['EVAL', s.source, ...tail()]))
      }
    })
  }
}
