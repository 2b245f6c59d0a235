/**
 * cms-realtime for Strapi 5, in the app's own lifecycles (`src/index.js`):
 *
 *   const { strapiRealtime } = require('cms-realtime/strapi')
 *   const live = strapiRealtime({ contentTypes: ['api::article.article'] })
 *   module.exports = { register: live.register, bootstrap: live.bootstrap, destroy: live.destroy }
 *
 * Why lifecycles, not a plugin or a `config/middlewares.js` entry: a
 * document-service middleware must be added in `register`, the channel can
 * only be mounted once Strapi's global middlewares are (in `bootstrap`, so
 * the logger, CORS and security headers run first), and it must close with
 * 1001 in `destroy`, before Strapi drops every socket. The app's lifecycles
 * are the one place Strapi offers all three to app code; a plugin would
 * need a package of its own for the same three calls.
 *
 * - Topics: `strapi:<uid>` (every document of a content type) and
 *   `strapi:<uid>:<documentId>` (one document). Event types: `created`,
 *   `updated`, `deleted`, `published`, `unpublished`, `draft-discarded`.
 * - Who: Strapi's own auth strategies, run as for a route: the admin
 *   panel's JWT (`admin`), then users-permissions JWTs; API tokens and the
 *   public role only when enabled.
 * - May they read it: the admin's RBAC (`plugin::content-manager.explorer.read`
 *   on the content type), or the users-permissions role / API token scope
 *   (`<uid>.find`, or `findOne` for a document topic), checked by Strapi's
 *   own `verify`.
 */
import debug from 'debug'
import { realtime, type KoaRealtime, type KoaRealtimeOptions } from '../../adapters/koa'
import type { Context } from 'koa'
import type { Server } from 'node:http'
import type { MaybePromise } from '../../types'

const log = debug('cms-realtime:strapi')

/** What one Strapi auth strategy leaves in `ctx.state.auth`. */
export interface StrapiAuth {
  strategy: { name: string; verify?: (auth: StrapiAuth, config: { scope?: string[] }) => unknown }
  credentials: unknown
  ability: { can(action: string, subject?: string): boolean } | null
}

/** A connected Strapi user, as `authorize`, `revalidate` and `rt.disconnect({ user })` see it. */
export interface StrapiUser {
  /** `admin:<id>`, `user:<id>` (users-permissions), `api-token:<id>` or `public`: unique across kinds. */
  id: string
  kind: 'admin' | 'user' | 'api-token' | 'public'
  auth: StrapiAuth
  /** The Strapi session behind the token (refresh-token mode): the connection lives as long as it does. */
  sessionId?: string
  /** A token without a session (legacy JWT mode) ends the connection when it expires. */
  expiresAt?: number
}

export type DocumentAction = 'create' | 'update' | 'delete' | 'publish' | 'unpublish' | 'discardDraft'

/** One document change, as the document-service middleware saw it after the write. */
export interface DocumentChange {
  uid: string
  action: DocumentAction
  documentId: string
  locale: string | null
  /** What the document service returned (the entry for create and update). */
  result: unknown
}

export interface StrapiRealtimeOptions {
  /** Content types whose changes are published, e.g. `['api::article.article']`. Subscribing to others is refused. */
  contentTypes: readonly string[]
  /** Accept the admin panel's JWTs. Default true. */
  admin?: boolean
  /** Accept users-permissions JWTs. Default true. */
  users?: boolean
  /** Accept API tokens (`Authorization: Bearer <token>`, scoped as for REST). Default false. */
  apiTokens?: boolean
  /** Accept requests with no credentials, as the public role. Default false. */
  public?: boolean
  /**
   * Extra fields for an event's data, merged over the default
   * `{ uid, documentId, locale, action }`. Keep it small and readable by
   * every subscriber: field-level RBAC is not applied to events.
   */
  data?: (change: DocumentChange) => Record<string, unknown> | undefined
  /** For your own topics (not `strapi:…`): may this user subscribe? Default: no. */
  authorize?: (user: StrapiUser, topic: string) => MaybePromise<boolean>
  /**
   * Every other cms-realtime option (`path`, `bus`, limits…), over what the
   * app's `config/realtime.ts` says. `ticketSecret` defaults to one derived
   * from the app's `APP_KEYS`.
   */
  realtime?: Omit<KoaRealtimeOptions<StrapiUser>, 'authenticate' | 'authorize' | 'revalidate' | 'server'>
}

/**
 * The parts of Strapi this integration touches (typed here, so `@strapi/types`
 * is no dependency). Middleware parameters are typed loosely on purpose:
 * Strapi's Koa types (2.x) and this package's (3.x) differ, and both must fit.
 */
export interface StrapiLike {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- any Koa major's middleware type must accept ours
  server: { use(mw: (ctx: any, next: any) => Promise<void>): unknown; httpServer: Server }
  documents: { use(mw: (ctx: { uid: string; action: string; params?: Record<string, unknown> }, next: () => Promise<unknown>) => Promise<unknown>): unknown }
  db: { inTransaction(): boolean; transaction(cb: (t: { onCommit(fn: () => void): void }) => unknown): Promise<unknown> }
  config: { get(path: string, fallback?: unknown): unknown }
  add(name: string, resolver: () => unknown): unknown
  get(name: string): unknown
  sessionManager?: (origin: string) => { isSessionActive(id: string): Promise<boolean> }
  log?: { warn(msg: string): void }
}

export interface StrapiRealtime {
  /** The channel (`publish`, `disconnect`, `reauthorize`, `stats`…), also `strapi.get('realtime')`. Set in `register`. */
  readonly rt: KoaRealtime<StrapiUser>
  register(app: { strapi: StrapiLike }): void
  bootstrap(app: { strapi: StrapiLike }): void
  destroy(app?: { strapi: StrapiLike }): Promise<void>
}

const EVENT_TYPES: Record<DocumentAction, string> = {
  create: 'created', update: 'updated', delete: 'deleted', publish: 'published', unpublish: 'unpublished', discardDraft: 'draft-discarded',
}

/** The topic of every document of `uid`, or of one. */
export function strapiTopic(uid: string, documentId?: string): string {
  return documentId === undefined ? `strapi:${uid}` : `strapi:${uid}:${documentId}`
}

export function strapiRealtime(options: StrapiRealtimeOptions): StrapiRealtime {
  const watched = new Set(options.contentTypes)
  if (watched.size === 0) throw new TypeError('cms-realtime/strapi: option "contentTypes" must name at least one content type uid')
  let rt: KoaRealtime<StrapiUser> | undefined
  return {
    get rt() {
      if (rt === undefined) throw new Error('cms-realtime/strapi: rt exists once register() has run')
      return rt
    },
    register({ strapi }) {
      const channel = realtime<StrapiUser>({
        ticketSecret: appKeys(strapi),
        // `config/realtime.ts`, Strapi's way for per-environment settings (its `env()` helper).
        ...(strapi.config.get('realtime', {}) as KoaRealtimeOptions<StrapiUser>),
        ...options.realtime,
        authenticate: (ctx) => authenticate(strapi, ctx, options),
        authorize: (user, topic) => authorize(user, topic, watched, options),
        revalidate: (user) => revalidate(strapi, user),
      })
      rt = channel
      strapi.add('realtime', () => channel)
      strapi.documents.use(async (context, next) => {
        const result = await next()
        // Never let the channel fail a saved write: nothing here throws or is awaited.
        try {
          if (watched.has(context.uid) && context.action in EVENT_TYPES) afterCommit(strapi, () => announce(channel, context, result, options))
        } catch (err) {
          log('could not publish a change of %s: %O', context.uid, err)
        }
        return result
      })
    },
    bootstrap({ strapi }) {
      if (rt === undefined) throw new Error('cms-realtime/strapi: call register() before bootstrap()')
      // After Strapi's global middlewares (logger, errors, security, CORS), before its router.
      strapi.server.use(rt)
      rt.attach(strapi.server.httpServer)
    },
    async destroy() {
      // Before Strapi destroys every socket: clients get 1001 and reconnect.
      await rt?.close()
    },
  }
}

/** Publish once the write is committed: at once, or when the surrounding transaction commits (never on rollback). */
function afterCommit(strapi: StrapiLike, fn: () => void): void {
  if (!strapi.db.inTransaction()) return fn()
  void strapi.db.transaction(({ onCommit }) => onCommit(fn)).catch((err: unknown) => log('onCommit: %O', err))
}

function announce(
  rt: KoaRealtime<StrapiUser>, context: { uid: string; action: string; params?: Record<string, unknown> }, result: unknown, options: StrapiRealtimeOptions,
): void {
  const action = context.action as DocumentAction
  const r = (result ?? {}) as { documentId?: unknown; locale?: unknown }
  const documentId = typeof r.documentId === 'string' ? r.documentId : context.params?.documentId
  if (typeof documentId !== 'string') return
  const locale = typeof context.params?.locale === 'string' ? context.params.locale : typeof r.locale === 'string' ? r.locale : null
  const change: DocumentChange = { uid: context.uid, action, documentId, locale, result }
  let data: Record<string, unknown> = { uid: context.uid, documentId, locale, action }
  try {
    data = { ...data, ...options.data?.(change) }
  } catch (err) {
    log('option data threw for %s: %O', context.uid, err)
  }
  const type = EVENT_TYPES[action]
  for (const topic of [strapiTopic(context.uid), strapiTopic(context.uid, documentId)]) {
    try {
      rt.publish(topic, type, data).catch((err: unknown) => log('publish to %s failed: %O', topic, err))
    } catch (err) {
      log('publish to %s refused: %O', topic, err)
    }
  }
}

interface StrapiCtx {
  state: Record<string, unknown> & { route?: unknown; auth?: StrapiAuth; session?: { id?: unknown } }
  get(header: string): string
}

interface AuthService {
  authenticate(ctx: unknown, next: () => Promise<void>): Promise<unknown>
}

/** Run Strapi's own strategies of one route type, as its router would: the auth they grant, or undefined. */
async function runStrategies(strapi: StrapiLike, ctx: StrapiCtx, type: 'admin' | 'content-api', names: string[]): Promise<StrapiAuth | undefined> {
  const saved = ctx.state.route
  ctx.state.route = { info: { type }, config: { auth: { strategies: names } } }
  let granted: StrapiAuth | undefined
  try {
    await (strapi.get('auth') as AuthService).authenticate(ctx, async () => {
      granted = ctx.state.auth
    })
  } finally {
    ctx.state.route = saved
  }
  return granted
}

async function authenticate(strapi: StrapiLike, koaCtx: Context, o: StrapiRealtimeOptions): Promise<StrapiUser | null> {
  const ctx = koaCtx as unknown as StrapiCtx
  const bearer = ctx.get('authorization') !== ''
  if (bearer && o.admin !== false) {
    const auth = await runStrategies(strapi, ctx, 'admin', ['admin'])
    if (auth !== undefined) return withSession({ id: `admin:${idOf(auth.credentials)}`, kind: 'admin', auth }, ctx, koaCtx)
  }
  const names = [...(o.users !== false ? ['users-permissions'] : []), ...(o.apiTokens === true ? ['api-token'] : [])]
  if (names.length === 0) return null
  const auth = await runStrategies(strapi, ctx, 'content-api', names)
  if (auth === undefined) return null
  // users-permissions grants the public role to a request without a token.
  if (auth.credentials == null) return o.public === true ? { id: 'public', kind: 'public', auth } : null
  if (auth.strategy.name === 'api-token') return { id: `api-token:${idOf(auth.credentials)}`, kind: 'api-token', auth }
  return withSession({ id: `user:${idOf(auth.credentials)}`, kind: 'user', auth }, ctx, koaCtx)
}

function withSession(user: StrapiUser, ctx: StrapiCtx, koaCtx: Context): StrapiUser {
  const id = ctx.state.session?.id
  if (typeof id === 'string' || typeof id === 'number') return { ...user, sessionId: String(id) }
  // No session (legacy JWT mode): the token's own expiry ends the connection.
  const exp = jwtExpiry(koaCtx.get('authorization'))
  return exp === undefined ? user : { ...user, expiresAt: exp }
}

function authorize(user: StrapiUser, topic: string, watched: Set<string>, o: StrapiRealtimeOptions): MaybePromise<boolean> {
  if (!topic.startsWith('strapi:')) return o.authorize?.(user, topic) ?? false
  const rest = topic.slice('strapi:'.length)
  // uids contain `::` and `.`, never a single `:` after the namespace.
  const m = /^([a-z0-9-]+::[A-Za-z0-9_.-]+)(?::([A-Za-z0-9]+))?$/.exec(rest)
  if (m === null || !watched.has(m[1]!)) return false
  const uid = m[1]!
  if (user.kind === 'admin') return user.auth.ability?.can('plugin::content-manager.explorer.read', uid) === true
  const scopes = m[2] === undefined ? [`${uid}.find`] : [`${uid}.find`, `${uid}.findOne`]
  return verifyAny(user.auth, scopes)
}

/** Strapi's own check for a content-API route with this scope (users-permissions role, API token). */
async function verifyAny(auth: StrapiAuth, scopes: string[]): Promise<boolean> {
  for (const scope of scopes) {
    try {
      await auth.strategy.verify?.(auth, { scope: [scope] })
      if (auth.strategy.verify !== undefined) return true
    } catch {
      // Forbidden for this scope: try the next
    }
  }
  return false
}

/** A signed-out or revoked Strapi session ends the connection at the next check (`revalidateMs`). */
async function revalidate(strapi: StrapiLike, user: StrapiUser): Promise<boolean> {
  if (user.sessionId === undefined || strapi.sessionManager === undefined) return true
  return strapi.sessionManager(user.kind === 'admin' ? 'admin' : 'users-permissions').isSessionActive(user.sessionId)
}

function idOf(credentials: unknown): string {
  const id = (credentials as { id?: unknown } | null)?.id
  return typeof id === 'string' || typeof id === 'number' ? String(id) : 'unknown'
}

/** The `exp` of a JWT bearer token (already verified by Strapi), in ms. */
function jwtExpiry(authorization: string): number | undefined {
  const payload = authorization.split(/\s+/)[1]?.split('.')[1]
  if (payload === undefined) return undefined
  try {
    const exp = (JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as { exp?: unknown }).exp
    return typeof exp === 'number' ? exp * 1000 : undefined
  } catch {
    return undefined
  }
}

/** Every node of one Strapi deployment shares `APP_KEYS`: tickets minted on one open on another. */
function appKeys(strapi: StrapiLike): string | undefined {
  const keys = strapi.config.get('server.app.keys')
  const joined = Array.isArray(keys) ? keys.join(',') : undefined
  return joined !== undefined && joined.length >= 16 ? joined : undefined
}
