/**
 * cms-realtime for Strapi 5, in the app's own lifecycles (`src/index.ts`):
 *
 *   import { strapiRealtime } from 'cms-realtime/strapi'
 *   const live = strapiRealtime({ contentTypes: ['api::article.article'] })
 *   export default { register: live.register, bootstrap: live.bootstrap, destroy: live.destroy }
 *
 * and, for the live Content Manager, two lines in `src/admin/app.tsx`
 * (`cms-realtime/strapi-admin`).
 *
 * Why lifecycles, not a plugin or a `config/middlewares.js` entry: a
 * document-service middleware and the database lifecycles must be added in
 * `register`, the channel can only be mounted once Strapi's global
 * middlewares are (in `bootstrap`, so the logger, CORS and security headers
 * run first), and it must close with 1001 in `destroy`, before Strapi drops
 * every socket. The app's lifecycles are the one place Strapi offers all
 * three to app code; a plugin would need a package of its own for the same
 * three calls, and Strapi loads every installed package that declares
 * itself a plugin, wanted or not.
 *
 * - Topics: `strapi:<uid>` (every document of a content type) and
 *   `strapi:<uid>:<documentId>` (one document); events.ts.
 * - Who, and what they may read: Strapi's own strategies and abilities,
 *   kept current; auth.ts.
 * - When access ends: Strapi's database lifecycles; lifecycles.ts.
 */
import { realtime, type KoaRealtime, type KoaRealtimeOptions } from '../../adapters/koa'
import type { MaybePromise } from '../../types'
import { authenticate, authorize, Grants, mayEdit, revalidate } from './auth'
import { adminName, documentMiddleware, type DocumentChange } from './events'
import { watchAccess } from './lifecycles'
import type { StrapiLike, StrapiUser } from './types'

export { EVENT_TYPES } from './events'
export { strapiTopic } from './topics'
export type { Actor, DocumentAction, DocumentChange, DocumentEventData } from './events'
export type { StrapiAuth, StrapiLike, StrapiUser } from './types'

export interface StrapiRealtimeOptions {
  /** Content types whose changes are published, e.g. `['api::article.article']`. Subscribing to others is refused. */
  contentTypes: readonly string[]
  /** Accept the admin panel's JWTs. Default true. */
  admin?: boolean
  /** Accept users-permissions JWTs. Default true. */
  users?: boolean
  /** Accept API tokens (`Authorization: Bearer <token>`, scoped as for REST). Default false. */
  apiTokens?: boolean
  /** Accept requests with no credentials, as the public role (each client address its own user). Default false. */
  public?: boolean
  /**
   * Extra fields for an event's data, merged over the default
   * (`DocumentEventData`: uid, documentId, locale, action, status, changed,
   * by, updatedBy, revision, updatedAt). The opt-in for field values: keep
   * them to what every subscriber may see, since field-level RBAC is not
   * applied to events.
   */
  data?: (change: DocumentChange) => Record<string, unknown> | undefined
  /** Say who made a change (`by`: id, kind and name). Default true; false keeps names out of events (`updatedBy`, an id, stays). */
  actor?: boolean
  /** For your own topics (not `strapi:…`): may this user subscribe? Default: no. */
  authorize?: (user: StrapiUser, topic: string) => MaybePromise<boolean>
  /**
   * Every other cms-realtime option (`path`, `bus`, `collab`, limits…), over
   * what the app's `config/realtime.ts` says. `ticketSecret` defaults to one
   * derived from the app's `APP_KEYS`; `collab.profile` to the admin's name.
   */
  realtime?: Omit<KoaRealtimeOptions<StrapiUser>, 'authenticate' | 'authorize' | 'revalidate' | 'server'>
}

export interface StrapiRealtime {
  /** The channel (`publish`, `disconnect`, `reauthorize`, `stats`…), also `strapi.get('realtime')`. Set in `register`. */
  readonly rt: KoaRealtime<StrapiUser>
  register(app: { strapi: StrapiLike }): void
  bootstrap(app: { strapi: StrapiLike }): void
  destroy(app?: { strapi: StrapiLike }): Promise<void>
}

/** `revalidateMs` when neither the options nor `config/realtime.ts` set it: the backstop behind the lifecycles. */
const REVALIDATE_MS = 30_000

export function strapiRealtime(options: StrapiRealtimeOptions): StrapiRealtime {
  const watched = new Set(options.contentTypes)
  if (watched.size === 0) throw new TypeError('cms-realtime/strapi: option "contentTypes" must name at least one content type uid')
  let rt: KoaRealtime<StrapiUser> | undefined
  const channel = (): KoaRealtime<StrapiUser> => {
    if (rt === undefined) throw new Error('cms-realtime/strapi: rt exists once register() has run')
    return rt
  }
  return {
    get rt() {
      return channel()
    },
    register({ strapi }) {
      const grants = new Grants(strapi)
      // `config/realtime.ts`, Strapi's way for per-environment settings (its `env()` helper).
      const configured = { ...(strapi.config.get('realtime', {}) as KoaRealtimeOptions<StrapiUser>), ...options.realtime }
      const revalidateMs = configured.revalidateMs ?? REVALIDATE_MS
      rt = realtime<StrapiUser>({
        ticketSecret: appKeys(strapi),
        ...configured,
        revalidateMs,
        // Locks are for editors: an admin who may update the type (a reader could otherwise make an editor's form read-only).
        collab: { profile: profileOf, canLock: (u, key) => mayEdit(grants, u, key), canTakeOver: (u, key) => mayEdit(grants, u, key), ...configured.collab },
        authenticate: (ctx) => authenticate(strapi, ctx, options),
        authorize: (user, topic) => authorize(grants, user, topic, watched, options),
        revalidate: (user) => revalidate(strapi, grants, user, (id) => {
          channel().reauthorize({ user: id }).catch(() => {})
        }),
      })
      strapi.add('realtime', () => rt)
      strapi.documents.use(documentMiddleware(strapi, channel, { watched, data: options.data, actor: options.actor }))
      watchAccess(strapi, channel, grants)
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

/** What other editors see of a user in presence and on a lock: a name and initials, no email. */
function profileOf(user: StrapiUser): { name: string; initials: string; kind: StrapiUser['kind'] } {
  const c = (user.auth.credentials ?? {}) as Record<string, unknown>
  const name = user.kind === 'admin' ? adminName(c) : user.kind === 'public' ? 'Visitor' : String(c.username ?? c.name ?? user.id)
  const initials = name.split(/\s+/).filter(Boolean).slice(0, 2).map((w) => w[0]!.toUpperCase()).join('')
  return { name, initials, kind: user.kind }
}

/** Every node of one Strapi deployment shares `APP_KEYS`: tickets minted on one open on another. */
function appKeys(strapi: StrapiLike): string | undefined {
  const keys = strapi.config.get('server.app.keys')
  const joined = Array.isArray(keys) ? keys.join(',') : undefined
  return joined !== undefined && joined.length >= 16 ? joined : undefined
}
