/**
 * Presence and soft locks in Redis, shared by every node (made by
 * `RedisBus.collabStore()`, on the bus's own connections).
 *
 *   <prefix>collab:pz:<topic>  ZSET  tab → lease end (Redis time, ms)
 *   <prefix>collab:ph:<topic>  HASH  tab → "<node>\n<member JSON>"
 *   <prefix>collab:lk:<key>    STRING "<tab>\n<since>\n<node>\n<holder JSON>", PX lease
 *   <prefix>collab:changes     channel: "p|<topic>" or "l|<key>" after every change
 *
 * `<node>` is the node serving the tab: a grace that ends on one node
 * removes nothing that the tab, reconnected to another node, took back.
 * Leases are in Redis time, so nodes' clocks do not matter. Nothing is
 * wiped at boot: a node's entries stay exactly as long as it renews them.
 * Lapsed presence entries are removed by whoever reads the topic next,
 * which also announces the change.
 */
import { createHash } from 'node:crypto'
import type { Acquired, CollabStore, LockHolder, PresenceMember } from './store'

export interface RedisCollabLink {
  readonly prefix: string
  /** A command on the bus's connection, with its timeout. */
  command(args: string[]): Promise<unknown>
  subscribe(channel: string, listener: (message: string) => void): Promise<void>
  unsubscribe(channel: string, listener: (message: string) => void): Promise<void>
}

const NOW = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`

function script(source: string): { source: string; sha: string } {
  return { source, sha: createHash('sha1').update(source).digest('hex') }
}

/** KEYS pz ph; ARGV tab member lease channel topic */
const PRESENT = script(`${NOW}
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[3]) * 2)
redis.call('PUBLISH', ARGV[4], 'p|' .. ARGV[5])
return 1`)

/** KEYS pz ph; ARGV tab channel topic node: only the node that serves the entry removes it */
const ABSENT = script(`
local cur = redis.call('HGET', KEYS[2], ARGV[1])
if cur and string.sub(cur, 1, string.len(ARGV[4]) + 1) ~= ARGV[4] .. '\\n' then return 0 end
local n = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if n > 0 then redis.call('PUBLISH', ARGV[2], 'p|' .. ARGV[3]) end
return n`)

/** KEYS pz ph; ARGV channel topic → member JSONs of live entries (lapsed ones removed and announced) */
const MEMBERS = script(`${NOW}
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('HDEL', KEYS[2], unpack(gone))
  redis.call('PUBLISH', ARGV[1], 'p|' .. ARGV[2])
end
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
if #live == 0 then return {} end
return redis.call('HMGET', KEYS[2], unpack(live))`)

/** KEYS lk; ARGV holder tab lease takeover channel key node → {'ok', previous} | {'held', current} */
const ACQUIRE = script(`${NOW}
local cur = redis.call('GET', KEYS[1])
local since = now
if cur then
  local a = string.find(cur, '\\n', 1, true)
  if string.sub(cur, 1, a - 1) == ARGV[2] then
    -- The same tab (maybe through another node now): it keeps its since, the node is the new one.
    local b = string.find(cur, '\\n', a + 1, true)
    since = string.sub(cur, a + 1, b - 1)
    cur = nil
  elseif ARGV[4] ~= '1' then
    return {'held', cur}
  end
end
redis.call('SET', KEYS[1], ARGV[2] .. '\\n' .. since .. '\\n' .. ARGV[7] .. '\\n' .. ARGV[1], 'PX', ARGV[3])
redis.call('PUBLISH', ARGV[5], 'l|' .. ARGV[6])
return {'ok', cur or ''}`)

/** KEYS lk; ARGV tab channel key node ('' for any) */
const RELEASE = script(`
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local a = string.find(cur, '\\n', 1, true)
if string.sub(cur, 1, a - 1) ~= ARGV[1] then return 0 end
if ARGV[4] ~= '' then
  local b = string.find(cur, '\\n', a + 1, true)
  local c = string.find(cur, '\\n', b + 1, true)
  if string.sub(cur, b + 1, c - 1) ~= ARGV[4] then return 0 end
end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], 'l|' .. ARGV[3])
return 1`)

/** ARGV prefix lease n (topic tab)*n (key tab)* → presence entries that are gone, as their indexes */
const RENEW = script(`${NOW}
local lease = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local missing = {}
for i = 0, n - 1 do
  local topic, tab = ARGV[4 + i * 2], ARGV[5 + i * 2]
  local pz, ph = ARGV[1] .. 'pz:' .. topic, ARGV[1] .. 'ph:' .. topic
  if redis.call('ZADD', pz, 'XX', 'CH', now + lease, tab) == 0 and not redis.call('ZSCORE', pz, tab) then
    missing[#missing + 1] = i
  else
    redis.call('PEXPIRE', pz, lease * 2)
    redis.call('PEXPIRE', ph, lease * 2)
  end
end
for i = 4 + n * 2, #ARGV, 2 do
  local lk, tab = ARGV[1] .. 'lk:' .. ARGV[i], ARGV[i + 1]
  local cur = redis.call('GET', lk)
  if cur then
    local nl = string.find(cur, '\\n', 1, true)
    if string.sub(cur, 1, nl - 1) == tab then redis.call('PEXPIRE', lk, lease) end
  end
end
return missing`)

/** Every script, for the test that compiles each on a real Redis (a Lua syntax error shows only at run time). */
export const COLLAB_SCRIPTS = { PRESENT, ABSENT, MEMBERS, ACQUIRE, RELEASE, RENEW }

export class RedisCollabStore implements CollabStore {
  readonly sweeps = true
  private readonly base: string
  private readonly channel: string
  private listener: (kind: 'presence' | 'lock', name: string) => void = () => {}
  private readonly onMessage = (message: string): void => {
    const bar = message.indexOf('|')
    if (bar !== 1) return
    this.listener(message[0] === 'p' ? 'presence' : 'lock', message.slice(2))
  }
  private readonly subscribed: Promise<void>

  constructor(private readonly link: RedisCollabLink) {
    this.base = `${link.prefix}collab:`
    this.channel = `${this.base}changes`
    this.subscribed = link.subscribe(this.channel, this.onMessage).catch(() => {})
  }

  async present(topic: string, member: PresenceMember, leaseMs: number, node: string): Promise<void> {
    await this.run(PRESENT, [this.pz(topic), this.ph(topic)], [member.tab, `${node}\n${JSON.stringify(member)}`, String(leaseMs), this.channel, topic])
  }

  async absent(topic: string, tab: string, node: string): Promise<void> {
    await this.run(ABSENT, [this.pz(topic), this.ph(topic)], [tab, this.channel, topic, node])
  }

  async members(topic: string): Promise<PresenceMember[]> {
    const rows = (await this.run(MEMBERS, [this.pz(topic), this.ph(topic)], [this.channel, topic])) as Array<string | null>
    const out: PresenceMember[] = []
    for (const row of rows) {
      if (typeof row !== 'string') continue
      try {
        out.push(JSON.parse(row.slice(row.indexOf('\n') + 1)) as PresenceMember)
      } catch {
        // not ours: skip
      }
    }
    return out.sort((a, b) => (a.tab < b.tab ? -1 : a.tab > b.tab ? 1 : 0))
  }

  async acquire(key: string, holder: Omit<LockHolder, 'since'>, leaseMs: number, takeover: boolean, node: string): Promise<Acquired> {
    const [result, value] = (await this.run(ACQUIRE, [this.lk(key)],
      [JSON.stringify(holder), holder.tab, String(leaseMs), takeover ? '1' : '0', this.channel, key, node])) as [string, string]
    if (result === 'held') return { ok: false, holder: parseHolder(value)! }
    return { ok: true, previous: parseHolder(value) }
  }

  async release(key: string, tab: string, node: string | undefined): Promise<boolean> {
    return (await this.run(RELEASE, [this.lk(key)], [tab, this.channel, key, node ?? ''])) === 1
  }

  async holder(key: string): Promise<LockHolder | null> {
    return parseHolder((await this.link.command(['GET', this.lk(key)])) as string | null)
  }

  async renew(presence: ReadonlyArray<readonly [string, string]>, locks: ReadonlyArray<readonly [string, string]>, leaseMs: number): Promise<Array<readonly [string, string]>> {
    const args = [this.base, String(leaseMs), String(presence.length), ...presence.flat(), ...locks.flat()]
    const missing = (await this.run(RENEW, [], args)) as number[]
    return missing.map((i) => presence[i]!)
  }

  onChange(listener: (kind: 'presence' | 'lock', name: string) => void): void {
    this.listener = listener
  }

  async close(): Promise<void> {
    // Not awaited: with Redis away, an unsubscribe would wait for it to come back.
    void this.subscribed.then(() => this.link.unsubscribe(this.channel, this.onMessage)).catch(() => {})
  }

  private async run(s: { source: string; sha: string }, keys: string[], args: string[]): Promise<unknown> {
    const tail = [String(keys.length), ...keys, ...args]
    try {
      return await this.link.command(['EVALSHA', s.sha, ...tail])
    } catch (err) {
      if (!String((err as Error).message).startsWith('NOSCRIPT')) throw err
      return this.link.command(['EVAL', s.source, ...tail])
    }
  }

  private pz(topic: string): string { return `${this.base}pz:${topic}` }
  private ph(topic: string): string { return `${this.base}ph:${topic}` }
  private lk(key: string): string { return `${this.base}lk:${key}` }
}

/** `<tab>\n<since>\n<node>\n<holder JSON>` → the holder. */
function parseHolder(value: string | null | undefined): LockHolder | null {
  if (typeof value !== 'string' || value === '') return null
  const a = value.indexOf('\n')
  const b = value.indexOf('\n', a + 1)
  const c = value.indexOf('\n', b + 1)
  if (a < 0 || b < 0 || c < 0) return null
  try {
    const h = JSON.parse(value.slice(c + 1)) as Omit<LockHolder, 'since'>
    return { ...h, tab: value.slice(0, a), since: Number(value.slice(a + 1, b)) }
  } catch {
    return null
  }
}
