/**
 * Defaults, validation and the environment override, applied in one place.
 * Misuse throws a TypeError naming the option (the way `ws` does), so a typo
 * fails at startup rather than at the first editor's connection.
 */
import type { CollabSettings } from './collab/settings'
import { defaultAuthorize } from './users'
import { hostPolicy, type HostPolicy, type OriginPolicy } from './server/origin'
import type { RealtimeOptions, User, MaybePromise, Bus, FallbackTransport } from './types'

export { defaultAuthorize, userId } from './users'

export const ENV_ENABLED = 'CMS_REALTIME_WEBSOCKETS_ENABLED'

export const DEFAULTS = {
  path: '/realtime',
  webSocketEnabled: true,
  requireOrigin: false,
  maxPayload: 4096,
  maxConnectionsPerUser: 32,
  maxConnections: 10_000,
  revalidateMs: 60_000,
  maxTopicsPerConnection: 100,
  maxTopicLength: 200,
  maxBufferedBytes: 1024 * 1024,
  maxMessagesPerSecond: 50,
  maxProtocolErrors: 10,
  heartbeatMs: 25_000,
  unclaimedUpgradeTimeoutMs: 10_000,
  handshakeTimeoutMs: 10_000,
  fallback: ['sse', 'poll'] as readonly FallbackTransport[],
  pollHoldMs: 25_000,
  fallbackWhenDisabled: false,
  ticketTtlMs: 30_000,
} as const

export interface ResolvedOptions<Ctx> {
  path: string
  webSocketEnabled: boolean
  authenticate: ((ctx: Ctx) => MaybePromise<User | null | undefined | false>) | undefined
  authorize: (user: User, topic: string) => MaybePromise<boolean>
  /** Origins allowed besides the same origin (see origin.ts). */
  originAllowed: OriginPolicy
  /** `allowedHosts` as a predicate; `undefined`: any host. */
  hostAllowed: HostPolicy
  requireOrigin: boolean
  /** `undefined`: ask the framework (the adapter's binding), else false. */
  trustProxy: boolean | undefined
  maxPayload: number
  maxConnectionsPerUser: number
  maxConnections: number
  revalidate: ((user: User) => MaybePromise<boolean>) | undefined
  revalidateMs: number
  maxTopicsPerConnection: number
  maxTopicLength: number
  maxBufferedBytes: number
  maxMessagesPerSecond: number
  maxProtocolErrors: number
  heartbeatMs: number
  unclaimedUpgradeTimeoutMs: number
  handshakeTimeoutMs: number
  bus: Bus | undefined
  /** The HTTP transports on offer, in the order the client steps down through them. */
  fallback: readonly FallbackTransport[]
  pollHoldMs: number
  fallbackWhenDisabled: boolean
  ticketSecret: string | Uint8Array | undefined
  ticketTtlMs: number
  collab: CollabSettings
}

const KNOWN = new Set([
  'server', 'path', 'webSocketEnabled', 'authenticate', 'authorize', 'allowedOrigins',
  'requireOrigin', 'allowedHosts', 'bus', 'trustProxy', 'revalidate', 'ticketSecret', 'collab', ...Object.keys(DEFAULTS),
])

export function resolveOptions<Ctx>(
  options: RealtimeOptions<Ctx> = {},
  env: NodeJS.ProcessEnv = process.env,
): ResolvedOptions<Ctx> {
  if (typeof options !== 'object' || options === null) {
    throw new TypeError('cms-realtime: options must be an object')
  }
  // Option bags with index signatures let typos pass silently; we refuse them.
  for (const key of Object.keys(options)) {
    if (!KNOWN.has(key)) throw new TypeError(`cms-realtime: unknown option "${key}"`)
  }
  const o = { ...DEFAULTS, ...stripUndefined(options) }

  if (typeof o.path !== 'string' || !o.path.startsWith('/') || o.path.length < 2 || o.path.endsWith('/')) {
    throw new TypeError(`cms-realtime: option "path" must start with "/" and not end with "/" (got ${JSON.stringify(o.path)})`)
  }
  if (typeof o.webSocketEnabled !== 'boolean') {
    throw new TypeError('cms-realtime: option "webSocketEnabled" must be a boolean')
  }
  for (const key of ['maxPayload', 'maxConnectionsPerUser', 'maxConnections', 'revalidateMs', 'maxTopicsPerConnection', 'maxTopicLength', 'maxBufferedBytes',
    'maxMessagesPerSecond', 'maxProtocolErrors', 'heartbeatMs', 'unclaimedUpgradeTimeoutMs', 'handshakeTimeoutMs', 'ticketTtlMs', 'pollHoldMs'] as const) {
    const v = o[key]
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
      throw new TypeError(`cms-realtime: option "${key}" must be a positive number (got ${String(v)})`)
    }
  }
  if (typeof o.fallbackWhenDisabled !== 'boolean') {
    throw new TypeError('cms-realtime: option "fallbackWhenDisabled" must be a boolean')
  }
  const fallback = fallbackList(o.fallback)
  if (o.trustProxy !== undefined && typeof o.trustProxy !== 'boolean') {
    throw new TypeError('cms-realtime: option "trustProxy" must be a boolean')
  }
  if (o.ticketSecret !== undefined && !(typeof o.ticketSecret === 'string' || o.ticketSecret instanceof Uint8Array)) {
    throw new TypeError('cms-realtime: option "ticketSecret" must be a string or bytes')
  }
  if (o.ticketSecret !== undefined && o.ticketSecret.length < 16) {
    throw new TypeError('cms-realtime: option "ticketSecret" must be at least 16 characters or bytes')
  }
  if (o.allowedHosts !== undefined && (!Array.isArray(o.allowedHosts) || o.allowedHosts.some((h) => typeof h !== 'string' || h.trim() === ''))) {
    throw new TypeError('cms-realtime: option "allowedHosts" must be an array of hostnames (".example.com" for a domain and its subdomains)')
  }
  for (const key of ['authenticate', 'authorize', 'revalidate'] as const) {
    if (o[key] !== undefined && typeof o[key] !== 'function') {
      throw new TypeError(`cms-realtime: option "${key}" must be a function`)
    }
  }

  return {
    path: o.path,
    webSocketEnabled: envFlag(env[ENV_ENABLED]) ?? o.webSocketEnabled,
    authenticate: o.authenticate,
    authorize: o.authorize ?? defaultAuthorize,
    originAllowed: originPolicy(o.allowedOrigins),
    hostAllowed: hostPolicy(o.allowedHosts),
    requireOrigin: o.requireOrigin,
    trustProxy: o.trustProxy,
    maxPayload: o.maxPayload,
    maxConnectionsPerUser: o.maxConnectionsPerUser,
    maxConnections: o.maxConnections,
    revalidate: o.revalidate,
    revalidateMs: o.revalidateMs,
    maxTopicsPerConnection: o.maxTopicsPerConnection,
    maxTopicLength: o.maxTopicLength,
    maxBufferedBytes: o.maxBufferedBytes,
    maxMessagesPerSecond: o.maxMessagesPerSecond,
    maxProtocolErrors: o.maxProtocolErrors,
    heartbeatMs: o.heartbeatMs,
    unclaimedUpgradeTimeoutMs: o.unclaimedUpgradeTimeoutMs,
    handshakeTimeoutMs: o.handshakeTimeoutMs,
    bus: o.bus,
    fallback,
    pollHoldMs: o.pollHoldMs,
    fallbackWhenDisabled: o.fallbackWhenDisabled,
    ticketSecret: o.ticketSecret,
    ticketTtlMs: o.ticketTtlMs,
    collab: collabSettings(o.collab as RealtimeOptions['collab']),
  }
}

/**
 * `fallback`: a list of `'sse'` and `'poll'` in the order to step down
 * through, or the older single values (`'sse'` alone, `'none'`).
 */
function fallbackList(v: unknown): readonly FallbackTransport[] {
  if (v === 'none') return []
  if (v === 'sse' || v === 'poll') return [v]
  if (Array.isArray(v) && v.every((t) => t === 'sse' || t === 'poll') && new Set(v).size === v.length) return [...v] as FallbackTransport[]
  throw new TypeError(`cms-realtime: option "fallback" must be a list of "sse" and "poll" (each once), or "none" (got ${JSON.stringify(v)})`)
}

const COLLAB_DEFAULTS = { leaveGraceMs: 3000, lockGraceMs: 15_000, leaseMs: 30_000 }

function collabSettings(c: RealtimeOptions['collab']): CollabSettings {
  if (c !== undefined && (typeof c !== 'object' || c === null)) throw new TypeError('cms-realtime: option "collab" must be an object')
  for (const key of Object.keys(c ?? {})) {
    if (!['leaveGraceMs', 'lockGraceMs', 'leaseMs', 'canLock', 'canTakeOver', 'profile'].includes(key)) {
      throw new TypeError(`cms-realtime: unknown option "collab.${key}"`)
    }
  }
  const merged = { ...COLLAB_DEFAULTS, ...stripUndefined(c ?? {}) }
  for (const key of ['leaveGraceMs', 'lockGraceMs', 'leaseMs'] as const) {
    const v = merged[key]
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
      throw new TypeError(`cms-realtime: option "collab.${key}" must be a positive number (got ${String(v)})`)
    }
  }
  for (const key of ['canLock', 'canTakeOver', 'profile'] as const) {
    if (merged[key] !== undefined && typeof merged[key] !== 'function') throw new TypeError(`cms-realtime: option "collab.${key}" must be a function`)
  }
  return merged as CollabSettings
}

/** `true`/`false` from an environment value, `undefined` when unset; anything else is a startup error. */
export function envFlag(value: string | undefined): boolean | undefined {
  if (value === undefined || value.trim() === '') return undefined
  const v = value.trim().toLowerCase()
  if (['1', 'true', 'on', 'yes'].includes(v)) return true
  if (['0', 'false', 'off', 'no'].includes(v)) return false
  throw new TypeError(`cms-realtime: ${ENV_ENABLED} must be true or false (got ${JSON.stringify(value)})`)
}

function originPolicy(allowed: RealtimeOptions['allowedOrigins']): OriginPolicy {
  // Same origin is always allowed (checkOrigin tests it first); this is the rest.
  if (allowed === undefined) return () => false
  if (allowed === '*') return () => true
  if (typeof allowed === 'function') return allowed
  if (!Array.isArray(allowed)) {
    throw new TypeError('cms-realtime: option "allowedOrigins" must be an array of origins, "*" or a function')
  }
  const set = new Set(allowed.map((a) => a.toLowerCase().replace(/\/$/, '')))
  return (origin) => set.has(origin.toLowerCase())
}

function stripUndefined<T extends object>(obj: T): Partial<T> {
  const out: Partial<T> = {}
  for (const [k, v] of Object.entries(obj)) if (v !== undefined) (out as Record<string, unknown>)[k] = v
  return out
}
