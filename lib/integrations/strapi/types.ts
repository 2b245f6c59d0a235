/**
 * The parts of Strapi this integration touches, typed here so
 * `@strapi/types` is no dependency. Middleware parameters are typed loosely
 * on purpose: Strapi's Koa types (2.x) and this package's (3.x) differ, and
 * both must fit.
 */
import type { Server } from 'node:http'

/** What one Strapi auth strategy leaves in `ctx.state.auth`. */
export interface StrapiAuth {
  strategy: { name: string; verify?: (auth: StrapiAuth, config: { scope?: string[] }) => unknown }
  credentials: unknown
  ability: { can(action: string, subject?: string): boolean } | null
}

/** A connected Strapi user, as `authorize`, `revalidate` and `rt.disconnect({ user })` see it. */
export interface StrapiUser {
  /**
   * `admin:<id>`, `user:<id>` (users-permissions), `api-token:<id>`,
   * `public:<client address>`, or `token:<hash of the token>` for
   * credentials without an id: unique across kinds, never shared by
   * strangers (it is what `maxConnectionsPerUser` counts).
   */
  id: string
  kind: 'admin' | 'user' | 'api-token' | 'public'
  auth: StrapiAuth
  /** The Strapi session behind the token (refresh-token mode): the connection lives as long as it does. */
  sessionId?: string
  /** A token without a session (legacy JWT mode) ends the connection when it expires. */
  expiresAt?: number
}

export type LifecycleEvent = {
  action: string
  model: { uid: string }
  params: { where?: unknown; data?: unknown }
  result?: unknown
  state: Record<string, unknown>
}

export interface StrapiLike {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- any Koa major's middleware type must accept ours
  server: { use(mw: (ctx: any, next: any) => Promise<void>): unknown; httpServer: Server }
  documents: { use(mw: (ctx: { uid: string; action: string; params?: Record<string, unknown> }, next: () => Promise<unknown>) => Promise<unknown>): unknown }
  db: {
    inTransaction(): boolean
    transaction(cb: (t: { onCommit(fn: () => void): void }) => unknown): Promise<unknown>
    query(uid: string): {
      findOne(q: { where: unknown; populate?: string[] }): Promise<Record<string, unknown> | null>
      findMany(q: { where?: unknown; select?: string[]; limit?: number }): Promise<Array<Record<string, unknown>>>
    }
    lifecycles: { subscribe(subscriber: (event: LifecycleEvent) => Promise<void>): unknown }
  }
  config: { get(path: string, fallback?: unknown): unknown }
  add(name: string, resolver: () => unknown): unknown
  get(name: string): unknown
  plugin?(name: string): { service(name: string): unknown } | undefined
  service?(uid: string): unknown
  contentAPI?: { permissions: { engine: { generateAbility(permissions: unknown[]): Promise<unknown> } } }
  requestContext?: { get(): unknown }
  sessionManager?: (origin: string) => { isSessionActive(id: string): Promise<boolean> }
  log?: { warn(msg: string): void }
}
