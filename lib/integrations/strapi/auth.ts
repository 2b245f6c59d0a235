/**
 * Who connects, and what they may read, by Strapi's own rules.
 *
 * - Who: Strapi's auth strategies, run as for one of its routes (the admin
 *   JWT, then users-permissions JWTs; API tokens and the public role when
 *   enabled).
 * - What: the ability each strategy builds (admin RBAC, the users-permissions
 *   role, the token's scope). A strategy builds it once per request, so a
 *   connection's would be frozen at its handshake; `Grants` reads the
 *   user's current one at each check instead, so a role change reaches
 *   open connections (lifecycles.ts re-checks them), not only new ones.
 */
import { createHash, randomUUID } from 'node:crypto'
import debug from 'debug'
import type { Context } from 'koa'
import type { MaybePromise } from '../../types'
import type { StrapiAuth, StrapiLike, StrapiUser } from './types'

const log = debug('cms-realtime:strapi')

export interface AuthOptions {
  admin?: boolean
  users?: boolean
  apiTokens?: boolean
  public?: boolean
  authorize?: (user: StrapiUser, topic: string) => MaybePromise<boolean>
}

/** A user's standing now: still allowed in at all, and their ability. */
export interface Grant {
  active: boolean
  ability: StrapiAuth['ability']
  /** The credentials as stored now, where a strategy's `verify` reads them (an API token's type). */
  credentials?: unknown
}

/** Strapi's API-token strategy: `content-api-token` since 5.x's admin tokens, `api-token` before. */
export const API_TOKEN_STRATEGIES = ['content-api-token', 'api-token']

type Ability = NonNullable<StrapiAuth['ability']> & { rules?: unknown }

/**
 * Users' grants, read from Strapi each time (a subscribe's, a re-check's):
 * no cache to go stale, here or on another node that is told to re-check.
 * Lookups for one user already in flight are shared, so a handshake with
 * twenty topics costs one.
 */
export class Grants {
  private readonly inFlight = new Map<string, Promise<Grant>>()
  /** Each user's rules at their last check, to tell a changed role at `revalidate`. */
  private readonly rules = new Map<string, string>()

  constructor(private readonly strapi: StrapiLike) {}

  /** `share: false` for a stand-in user (no real credentials): its lookup is not lent to real ones. */
  get(user: StrapiUser, share = true): Promise<Grant> {
    const hit = share ? this.inFlight.get(user.id) : undefined
    if (hit !== undefined) return hit
    const p = this.build(user).catch((err: unknown) => {
      // A failed lookup (the database down) keeps the user as they were: the next check asks again.
      log('could not check %s: %O', user.id, err)
      return { active: true, ability: user.auth.ability }
    })
    if (!share) return p
    this.inFlight.set(user.id, p)
    void p.finally(() => { if (this.inFlight.get(user.id) === p) this.inFlight.delete(user.id) })
    return p
  }

  /** Did `user`'s rules change since their last check (a role edited on another node, or in the database)? */
  changed(user: StrapiUser, grant: Grant): boolean {
    const now = JSON.stringify((grant.ability as Ability | null)?.rules ?? null)
    const before = this.rules.get(user.id)
    // Bounded: anonymous visitors (`public:<address>`) come and go for good.
    if (before === undefined && this.rules.size >= 10_000) this.rules.clear()
    this.rules.set(user.id, now)
    return before !== undefined && before !== now
  }

  /** Forget a user who left for good (deleted). */
  forget(id: string): void {
    this.rules.delete(id)
  }

  private async build(user: StrapiUser): Promise<Omit<Grant, 'rules' | 'at'>> {
    const s = this.strapi
    const id = (user.auth.credentials as { id?: unknown } | null)?.id
    // Credentials without an id (a custom strategy): nothing to look up.
    if (id == null && user.kind !== 'public') return { active: true, ability: user.auth.ability }
    switch (user.kind) {
      case 'admin': {
        const row = await s.db.query('admin::user').findOne({ where: { id }, populate: ['roles'] })
        if (row === null || row.isActive !== true || row.blocked === true) return { active: false, ability: null }
        const engine = (s.service?.('admin::permission') as { engine?: { generateUserAbility(u: unknown): Promise<StrapiAuth['ability']> } } | undefined)?.engine
        return { active: true, ability: engine === undefined ? user.auth.ability : await engine.generateUserAbility(row) }
      }
      case 'user': {
        const row = await s.db.query('plugin::users-permissions.user').findOne({ where: { id }, populate: ['role'] })
        if (row === null || row.blocked === true) return { active: false, ability: null }
        const role = (row.role as { id?: unknown } | null)?.id
        return { active: true, ability: role === undefined ? null : await this.contentAbility((p) => p.findRolePermissions(role)) }
      }
      case 'public':
        return { active: true, ability: await this.contentAbility((p) => p.findPublicPermissions()) }
      case 'api-token': {
        // Regenerated, narrowed, expired or deleted since the handshake: as stored now.
        const row = await s.db.query('admin::api-token').findOne({ where: { id }, populate: ['permissions'] })
        if (row === null || (row.expiresAt != null && new Date(row.expiresAt as string).getTime() <= Date.now())) return { active: false, ability: null }
        const actions = ((row.permissions ?? []) as Array<{ action?: unknown }>).map((p) => p.action)
        const engine = s.contentAPI?.permissions.engine
        const ability = row.type === 'custom' && engine !== undefined ? (await engine.generateAbility(actions.map((action) => ({ action })))) as StrapiAuth['ability'] : user.auth.ability
        return { active: true, ability, credentials: { ...row, permissions: actions } }
      }
    }
  }

  /** A content-API ability from users-permissions permissions, as its strategy builds one. */
  private async contentAbility(find: (p: PermissionService) => Promise<unknown[]>): Promise<StrapiAuth['ability']> {
    const service = this.strapi.plugin?.('users-permissions')?.service('permission') as PermissionService | undefined
    const engine = this.strapi.contentAPI?.permissions.engine
    if (service === undefined || engine === undefined) return null
    return (await engine.generateAbility((await find(service)).map((p) => service.toContentAPIPermission(p)))) as StrapiAuth['ability']
  }
}

interface PermissionService {
  findRolePermissions(roleId: unknown): Promise<unknown[]>
  findPublicPermissions(): Promise<unknown[]>
  toContentAPIPermission(p: unknown): unknown
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

export async function authenticate(strapi: StrapiLike, koaCtx: Context, o: AuthOptions): Promise<StrapiUser | null> {
  const ctx = koaCtx as unknown as StrapiCtx
  const authorization = ctx.get('authorization')
  if (authorization !== '' && o.admin !== false) {
    const auth = await runStrategies(strapi, ctx, 'admin', ['admin'])
    if (auth !== undefined) return withSession({ id: idFor('admin', auth.credentials, authorization), kind: 'admin', auth }, ctx, koaCtx)
  }
  const names = [...(o.users !== false ? ['users-permissions'] : []), ...(o.apiTokens === true ? API_TOKEN_STRATEGIES : [])]
  if (names.length === 0) return null
  const auth = await runStrategies(strapi, ctx, 'content-api', names)
  if (auth === undefined) return null
  // users-permissions grants the public role to a request without a token.
  // Each visitor's address is their identity, so `maxConnectionsPerUser`
  // caps one visitor (behind a proxy: the forwarded address, with Strapi's
  // `server.proxy` on) and not every anonymous visitor at once.
  if (auth.credentials == null) return o.public === true ? { id: `public:${koaCtx.ip || randomUUID()}`, kind: 'public', auth } : null
  if (API_TOKEN_STRATEGIES.includes(auth.strategy.name)) return { id: idFor('api-token', auth.credentials, authorization), kind: 'api-token', auth }
  const user = withSession({ id: idFor('user', auth.credentials, authorization), kind: 'user', auth }, ctx, koaCtx)
  // users-permissions does not check the session behind an access token: a
  // signed-out device's token, still within its lifetime, must not reconnect.
  if (user.sessionId !== undefined && strapi.sessionManager !== undefined && !(await strapi.sessionManager('users-permissions').isSessionActive(user.sessionId))) return null
  return user
}

/**
 * `<kind>:<id>`; credentials without an id (a custom strategy) are told
 * apart by their token, so two such users never share one identity (one
 * cap, one `disconnect`).
 */
function idFor(kind: string, credentials: unknown, authorization: string): string {
  const id = (credentials as { id?: unknown } | null)?.id
  if (typeof id === 'string' || typeof id === 'number') return `${kind}:${id}`
  const token = authorization === '' ? randomUUID() : createHash('sha256').update(authorization).digest('base64url').slice(0, 22)
  return `${kind}:token-${token}`
}

function withSession(user: StrapiUser, ctx: StrapiCtx, koaCtx: Context): StrapiUser {
  const id = ctx.state.session?.id
  if (typeof id === 'string' || typeof id === 'number') return { ...user, sessionId: String(id) }
  // No session (legacy JWT mode): the token's own expiry ends the connection.
  const exp = jwtExpiry(koaCtx.get('authorization'))
  return exp === undefined ? user : { ...user, expiresAt: exp }
}

/** Content-type uids contain `::` and `.`, never a single `:` after the namespace. */
const STRAPI_TOPIC = /^strapi:([a-z0-9-]+::[A-Za-z0-9_.-]+)(?::([A-Za-z0-9]+))?$/

export async function authorize(grants: Grants, user: StrapiUser, topic: string, watched: ReadonlySet<string>, o: AuthOptions): Promise<boolean> {
  if (!topic.startsWith('strapi:')) return (await o.authorize?.(user, topic)) ?? false
  const m = STRAPI_TOPIC.exec(topic)
  if (m === null || !watched.has(m[1]!)) return false
  const uid = m[1]!
  const grant = await grants.get(user)
  if (!grant.active) return false
  if (user.kind === 'admin') return grant.ability?.can('plugin::content-manager.explorer.read', uid) === true
  const scopes = m[2] === undefined ? [`${uid}.find`] : [`${uid}.find`, `${uid}.findOne`]
  return verifyAny({ ...user.auth, ability: grant.ability, credentials: grant.credentials ?? user.auth.credentials }, scopes)
}

/** May `user` edit the document behind lock key `key` (an admin with the Content Manager's update permission on its type)? */
export async function mayEdit(grants: Grants, user: StrapiUser, key: string): Promise<boolean> {
  const uid = STRAPI_TOPIC.exec(key)?.[1]
  if (uid === undefined || user.kind !== 'admin') return false
  const grant = await grants.get(user)
  return grant.active && grant.ability?.can('plugin::content-manager.explorer.update', uid) === true
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

/**
 * The backstop behind the lifecycles (`revalidateMs`), and what reaches
 * other nodes' connections when a change was made on one: the Strapi
 * session still active, the user still active, and a changed ability
 * re-checks the user's open subscriptions.
 */
export async function revalidate(strapi: StrapiLike, grants: Grants, user: StrapiUser, changed: (id: string) => void): Promise<boolean> {
  if (user.sessionId !== undefined && strapi.sessionManager !== undefined) {
    if (!(await strapi.sessionManager(user.kind === 'admin' ? 'admin' : 'users-permissions').isSessionActive(user.sessionId))) return false
  }
  const grant = await grants.get(user)
  if (grant.active && grants.changed(user, grant)) changed(user.id)
  return grant.active
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
