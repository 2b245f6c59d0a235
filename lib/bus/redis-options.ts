/**
 * What the Redis bus takes: the part of a node-redis client it uses, and its
 * options. Type-only, so nothing here loads a Redis client.
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
