/**
 * What the Redis bus takes: the part of a node-redis client it uses, and its
 * options, with their defaults. Nothing here loads a Redis client.
 */

/** The part of a node-redis (`redis` >= 5) connection the bus uses: its own two, made with `duplicate()`. */
export interface RedisConnectionLike {
  readonly isReady: boolean
  connect(): Promise<unknown>
  sendCommand(args: readonly string[]): Promise<unknown>
  subscribe(channel: string, listener: (message: string, channel: string) => unknown): Promise<void>
  unsubscribe(channel: string, listener: (message: string, channel: string) => unknown): Promise<void>
  destroy(): void
  on(event: 'error' | 'ready' | 'reconnecting', listener: (err: Error) => void): unknown
}

/**
 * The part of a node-redis (`redis` >= 5) client the bus uses: pass the
 * result of `createClient()`. The bus opens its own two connections with its
 * options (`duplicate()`), with a reconnect delay of its own; the client
 * itself is not used for commands and stays yours.
 */
export interface RedisClientLike {
  readonly options?: { socket?: object }
  duplicate(overrides?: { socket?: object }): RedisConnectionLike
  on(event: 'error', listener: (err: Error) => void): unknown
  off(event: 'error', listener: (err: Error) => void): unknown
}

export interface RedisBusOptions {
  /** Prefix of every key and channel, so apps can share one Redis. Default `'cms-realtime:'`. */
  keyPrefix?: string
  /** Events kept per topic (approximately: Redis trims whole nodes, so at least this many). Default 1000. */
  historySize?: number
  /** Also drop events older than this, in ms. Default: none (only `historySize`). */
  historyMaxAgeMs?: number
  /** A topic's stream expires after this long without a publish, in ms. Default 86400000 (1 day). */
  idleTtlMs?: number
  /**
   * Longest wait for one Redis command, in ms: past it the node delivers
   * locally (and `publish` resolves) as during an outage. Default 500.
   */
  commandTimeoutMs?: number
  /** Interval of the liveness probe (a silent link is noticed within about this plus `commandTimeoutMs`). Default 1000. */
  livenessMs?: number
  /** Longest delay between reconnection attempts of the bus's connections, in ms. Default 1000. */
  maxReconnectDelayMs?: number
}

/** The options with their defaults, checked: a misuse throws a TypeError naming the option. */
export function resolveRedisOptions(options: RedisBusOptions): Required<RedisBusOptions> {
  const o = {
    keyPrefix: options.keyPrefix ?? 'cms-realtime:',
    historySize: options.historySize ?? 1000,
    historyMaxAgeMs: options.historyMaxAgeMs ?? 0,
    idleTtlMs: options.idleTtlMs ?? 86_400_000,
    commandTimeoutMs: options.commandTimeoutMs ?? 500,
    livenessMs: options.livenessMs ?? 1000,
    maxReconnectDelayMs: options.maxReconnectDelayMs ?? 1000,
  }
  if (typeof o.keyPrefix !== 'string') throw new TypeError('cms-realtime: option "keyPrefix" must be a string')
  if (!Number.isInteger(o.historySize) || o.historySize < 1) throw new TypeError('cms-realtime: option "historySize" must be a whole number >= 1')
  if (!(o.historyMaxAgeMs >= 0)) throw new TypeError('cms-realtime: option "historyMaxAgeMs" must be >= 0')
  if (!Number.isInteger(o.idleTtlMs) || o.idleTtlMs < 1000) throw new TypeError('cms-realtime: option "idleTtlMs" must be a whole number >= 1000')
  for (const key of ['commandTimeoutMs', 'livenessMs', 'maxReconnectDelayMs'] as const) {
    if (!(o[key] > 0) || !Number.isFinite(o[key])) throw new TypeError(`cms-realtime: option "${key}" must be a positive number`)
  }
  return o
}
