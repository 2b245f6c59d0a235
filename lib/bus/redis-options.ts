/**
 * What the Redis bus takes: the part of a node-redis client it uses, and its
 * options. Type-only, so nothing here loads a Redis client.
 */
/** The part of a node-redis (`redis` >= 5) subscriber connection the bus uses. */
export interface RedisSubscriberLike {
  readonly isReady: boolean
  connect(): Promise<unknown>
  subscribe(channel: string, listener: (message: string, channel: string) => unknown): Promise<void>
  unsubscribe(channel: string, listener: (message: string, channel: string) => unknown): Promise<void>
  destroy(): void
  on(event: 'error' | 'ready' | 'reconnecting', listener: (err: Error) => void): unknown
}

/** The part of a node-redis (`redis` >= 5) client the bus uses: pass the result of `createClient()`, connected. */
export interface RedisClientLike {
  readonly isReady: boolean
  sendCommand(args: readonly string[], options?: { timeout?: number }): Promise<unknown>
  /** The bus opens its own subscriber connection with the client's options. */
  duplicate(): RedisSubscriberLike
  on(event: 'error' | 'ready', listener: (err: Error) => void): unknown
  off(event: 'error' | 'ready', listener: (err: Error) => void): unknown
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
  /** Longest wait for one Redis command before falling back to local delivery, in ms. Default 1000. */
  commandTimeoutMs?: number
}
