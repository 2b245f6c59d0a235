/**
 * Session life from Strapi's own lifecycles: the database event that
 * blocks, deletes or deactivates a user, changes a role's permissions or
 * signs a device out ends or re-checks the connections it concerns at once,
 * once the write has committed. The selectors are data (`{ user }`,
 * `{ match }`), so on the Redis bus they act on every node, not only the one
 * that took the write. `revalidateMs` stays as the backstop (a change made
 * in the database behind Strapi's back).
 *
 * Database lifecycles (`strapi.db.lifecycles`), not document-service
 * middlewares: users, roles, permissions and sessions are written through
 * `strapi.db.query` by Strapi itself (the admin's user and role screens,
 * users-permissions' logout, the session manager), which a document-service
 * middleware never sees.
 */
import debug from 'debug'
import type { KoaRealtime } from '../../adapters/koa'
import type { Grants } from './auth'
import { afterCommit } from './events'
import type { LifecycleEvent, StrapiLike, StrapiUser } from './types'

const log = debug('cms-realtime:strapi')

/** The user tables, and the kind of user their rows are. */
const USERS: Record<string, StrapiUser['kind']> = {
  'admin::user': 'admin',
  'plugin::users-permissions.user': 'user',
  'admin::api-token': 'api-token',
}

/** Tables whose rows make up a kind of user's abilities: any write re-checks every such user. */
const GRANTS: Record<string, ReadonlyArray<StrapiUser['kind']>> = {
  'admin::permission': ['admin'],
  'admin::role': ['admin'],
  'plugin::users-permissions.permission': ['user', 'public'],
  'plugin::users-permissions.role': ['user', 'public'],
  'admin::api-token-permission': ['api-token'],
}

const SESSIONS = 'admin::session'

/** Permission writes within this long are one re-check: saving a role writes one row per action. */
const COALESCE_MS = 25

export function watchAccess(strapi: StrapiLike, rt: () => KoaRealtime<StrapiUser>, grants: Grants): void {
  const pending = new Set<StrapiUser['kind']>()
  let timer: NodeJS.Timeout | undefined
  const regrant = (kinds: ReadonlyArray<StrapiUser['kind']>): void => {
    for (const k of kinds) pending.add(k)
    timer ??= setTimeout(() => {
      timer = undefined
      const kind = [...pending]
      pending.clear()
      try {
        rt().reauthorize({ match: { kind } }).catch((err: unknown) => log('reauthorize: %O', err))
      } catch (err) {
        log('reauthorize: %O', err)
      }
    }, COALESCE_MS).unref()
  }
  strapi.db.lifecycles.subscribe(async (event) => {
    // A lifecycle that throws fails the write it belongs to: never.
    try {
      await onLifecycle(strapi, rt, grants, event, regrant)
    } catch (err) {
      log('lifecycle %s of %s: %O', event.action, event.model?.uid, err)
    }
  })
}

async function onLifecycle(
  strapi: StrapiLike, rt: () => KoaRealtime<StrapiUser>, grants: Grants, event: LifecycleEvent, regrant: (kinds: ReadonlyArray<StrapiUser['kind']>) => void,
): Promise<void> {
  const uid = event.model?.uid
  const action = event.action
  if (uid === SESSIONS) return sessions(strapi, rt, event)
  const kind = uid === undefined ? undefined : USERS[uid]
  if (kind !== undefined) {
    // Bulk writes name their rows by a query: find them before, act after.
    if (action === 'beforeUpdateMany' || action === 'beforeDeleteMany') {
      event.state.ids = await idsOf(strapi, uid!, event.params.where, 'id')
      return
    }
    let ids: unknown[] | undefined
    if (action === 'afterUpdate' || action === 'afterDelete') ids = [(event.result as { id?: unknown } | null)?.id]
    else if (action === 'afterUpdateMany' || action === 'afterDeleteMany') ids = event.state.ids as unknown[] | undefined
    if (ids === undefined) return
    const deleted = action.startsWith('afterDelete')
    const rows = ids.filter((id) => id != null)
    afterCommit(strapi, () => void recheck(rt(), grants, kind, rows, deleted).catch((err: unknown) => log('recheck %s %o: %O', kind, rows, err)))
    return
  }
  const kinds = uid === undefined ? undefined : GRANTS[uid]
  if (kinds !== undefined && action.startsWith('after')) afterCommit(strapi, () => regrant(kinds))
}

/** Users changed or removed: end the connections of those who may no longer connect, re-check the rest's topics. */
async function recheck(rt: KoaRealtime<StrapiUser>, grants: Grants, kind: StrapiUser['kind'], ids: unknown[], deleted: boolean): Promise<void> {
  for (const id of ids) {
    const key = `${kind}:${String(id)}`
    if (deleted) {
      grants.forget(key)
      rt.disconnect({ user: key }, 'user deleted')
      continue
    }
    // The user as stored now: their connections may all be on other nodes.
    const grant = await grants.get({ id: key, kind, auth: { strategy: { name: kind }, credentials: { id }, ability: null } }, false)
    if (!grant.active) rt.disconnect({ user: key }, 'user blocked')
    else await rt.reauthorize({ user: key })
  }
}

/** A signed-out device, a revoked or expired session: its connections end (close 4401). */
async function sessions(strapi: StrapiLike, rt: () => KoaRealtime<StrapiUser>, event: LifecycleEvent): Promise<void> {
  if (event.action === 'beforeDelete' || event.action === 'beforeDeleteMany') {
    event.state.sessions = await idsOf(strapi, SESSIONS, event.params.where, 'sessionId')
    return
  }
  if (event.action !== 'afterDelete' && event.action !== 'afterDeleteMany') return
  const ended = ((event.state.sessions as unknown[] | undefined) ?? []).map(String)
  if (ended.length > 0) afterCommit(strapi, () => void rt().disconnect({ match: { sessionId: ended } }, 'signed out'))
}

async function idsOf(strapi: StrapiLike, uid: string, where: unknown, column: string): Promise<unknown[]> {
  const rows = await strapi.db.query(uid).findMany({ where: where ?? {}, select: [column] })
  return rows.map((r) => r[column])
}
