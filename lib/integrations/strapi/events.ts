/**
 * Document changes as events: a document-service middleware sees every
 * write (REST, GraphQL, the Content Manager, the app's own code), reads what
 * an update changes, and publishes once the write has committed.
 *
 * The event's data is the schema the admin UI and the Payload integration
 * share: enough to show "Ben updated Title" without a refetch, and no field
 * value unless the app opts in (`data(change)`), since field-level
 * permissions are not applied to events.
 */
import debug from 'debug'
import type { KoaRealtime } from '../../adapters/koa'
import { strapiTopic } from './topics'
import type { StrapiLike, StrapiUser } from './types'

const log = debug('cms-realtime:strapi')

export type DocumentAction = 'create' | 'update' | 'delete' | 'publish' | 'unpublish' | 'discardDraft'

export const EVENT_TYPES: Record<DocumentAction, string> = {
  create: 'created', update: 'updated', delete: 'deleted', publish: 'published', unpublish: 'unpublished', discardDraft: 'draft-discarded',
}

/** Who made a change: a Strapi admin, a users-permissions user or an API token; `null` for the app's own code. */
export interface Actor {
  /** As `StrapiUser.id`: `admin:1`, `user:7`, `api-token:2`. */
  id: string
  kind: 'admin' | 'user' | 'api-token'
  /** An admin's first and last name, a user's username, a token's name. */
  name: string
}

/** One document change, as the document-service middleware saw it after the write. */
export interface DocumentChange {
  uid: string
  action: DocumentAction
  documentId: string
  locale: string | null
  /** What the document service returned (the entry for create and update). */
  result: unknown
  /** For an update: the draft as it was before, as stored (no relations); otherwise undefined. */
  previous: Record<string, unknown> | undefined
  /** Top-level fields whose stored value changed (update); the fields written (create); [] otherwise. */
  changed: string[]
  /** Who, from the request that made the change; null outside a request. */
  by: Actor | null
}

/**
 * `data` of every `strapi:` event. A contract: the admin UI reads it, and
 * the Payload integration sends the same shape.
 */
export interface DocumentEventData {
  uid: string
  documentId: string
  locale: string | null
  action: DocumentAction
  /** The version written: `draft` or `published` (a type without Draft & Publish: always `published`); null for a delete. */
  status: 'draft' | 'published' | null
  /** Field names (see `DocumentChange.changed`); never values. */
  changed: string[]
  /** Who (null outside a request; omitted with `actor: false`, which keeps `updatedBy`, an id). */
  by?: Actor | null
  /** `updatedBy` and `revision` (the stored `updatedAt`, in ms) drive the client's stale-edit warning (`watchRevision`). */
  updatedBy?: string
  revision?: number
  updatedAt?: string
  [extra: string]: unknown
}

/** What no edit view shows as a change of its own. */
const META = new Set(['id', 'documentId', 'createdAt', 'updatedAt', 'publishedAt', 'createdBy', 'updatedBy', 'locale', 'localizations'])

export interface EventOptions {
  watched: ReadonlySet<string>
  data?: (change: DocumentChange) => Record<string, unknown> | undefined
  actor?: boolean
}

type DocContext = { uid: string; action: string; params?: Record<string, unknown> }

/** The document-service middleware; `rt()` is the channel (set by `register`, before any write). */
export function documentMiddleware(strapi: StrapiLike, rt: () => KoaRealtime<StrapiUser>, o: EventOptions) {
  return async (context: DocContext, next: () => Promise<unknown>): Promise<unknown> => {
    if (!o.watched.has(context.uid) || !(context.action in EVENT_TYPES)) return next()
    const previous = context.action === 'update' ? await draftBefore(strapi, context) : undefined
    const result = await next()
    // Never let the channel fail a saved write: nothing after this point throws or is awaited.
    try {
      const change = changeOf(strapi, context, result, previous)
      if (change !== undefined) afterCommit(strapi, () => announce(rt(), change, o))
    } catch (err) {
      log('could not publish a change of %s: %O', context.uid, err)
    }
    return result
  }
}

/** The stored draft an update will overwrite (one indexed read), or undefined when it cannot be read. */
async function draftBefore(strapi: StrapiLike, context: DocContext): Promise<Record<string, unknown> | undefined> {
  const documentId = context.params?.documentId
  if (typeof documentId !== 'string') return undefined
  const locale = typeof context.params?.locale === 'string' ? context.params.locale : undefined
  try {
    const rows = await strapi.db.query(context.uid).findMany({ where: { documentId, ...(locale === undefined ? {} : { locale }) }, limit: 4 })
    // The draft row (publishedAt null) is the one an update writes; a type without Draft & Publish has one row.
    return rows.find((r) => r.publishedAt == null) ?? rows[0]
  } catch (err) {
    log('could not read %s %s before its update: %O', context.uid, documentId, err)
    return undefined
  }
}

function changeOf(strapi: StrapiLike, context: DocContext, result: unknown, previous: Record<string, unknown> | undefined): DocumentChange | undefined {
  const action = context.action as DocumentAction
  const r = (result ?? {}) as Record<string, unknown>
  const documentId = typeof r.documentId === 'string' ? r.documentId : context.params?.documentId
  if (typeof documentId !== 'string') return undefined
  const locale = typeof context.params?.locale === 'string' ? context.params.locale : typeof r.locale === 'string' ? r.locale : null
  return { uid: context.uid, action, documentId, locale, result, previous, changed: changedFields(action, context.params?.data, r, previous), by: actorOf(strapi) }
}

function changedFields(action: DocumentAction, written: unknown, after: Record<string, unknown>, before: Record<string, unknown> | undefined): string[] {
  const data = written !== null && typeof written === 'object' ? Object.keys(written) : []
  if (action === 'create') return data.filter((k) => !META.has(k))
  if (action !== 'update') return []
  if (before === undefined) return data.filter((k) => !META.has(k))
  // The Content Manager sends the whole form: compare what is stored, not what was sent.
  const keys = new Set([...data, ...Object.keys(after)])
  return [...keys].filter((k) => !META.has(k) && k in after && k in before && !same(before[k], after[k]))
}

function same(a: unknown, b: unknown): boolean {
  if (a === b) return true
  if (a instanceof Date || b instanceof Date) return new Date(a as string).getTime() === new Date(b as string).getTime()
  return JSON.stringify(a) === JSON.stringify(b)
}

/** Who, from the request in progress (Strapi's request context): its auth strategy and credentials. */
function actorOf(strapi: StrapiLike): Actor | null {
  let ctx: { state?: { auth?: { strategy?: { name?: string }; credentials?: unknown }; user?: unknown } } | undefined
  try {
    ctx = strapi.requestContext?.get() as typeof ctx
  } catch {
    return null
  }
  const auth = ctx?.state?.auth
  const c = auth?.credentials as Record<string, unknown> | null | undefined
  if (c == null || (typeof c.id !== 'string' && typeof c.id !== 'number')) return null
  switch (auth?.strategy?.name) {
    case 'admin': return { id: `admin:${c.id}`, kind: 'admin', name: adminName(c) }
    case 'users-permissions': return { id: `user:${c.id}`, kind: 'user', name: String(c.username ?? c.email ?? c.id) }
    case 'api-token':
    case 'content-api-token': return { id: `api-token:${c.id}`, kind: 'api-token', name: String(c.name ?? c.id) }
    default: return null
  }
}

/** How Strapi's admin shows a user: first and last name, else the username; never the email (events and presence are seen by others). */
export function adminName(u: Record<string, unknown>): string {
  const full = [u.firstname, u.lastname].filter((s) => typeof s === 'string' && s !== '').join(' ')
  return full !== '' ? full : typeof u.username === 'string' && u.username !== '' ? u.username : `Admin ${String(u.id)}`
}

/** Publish once the write is committed: at once, or when the surrounding transaction commits (never on rollback). */
export function afterCommit(strapi: StrapiLike, fn: () => void): void {
  // Strapi runs commit callbacks in a plain loop: a throw would fail the committed write's request.
  const safe = (): void => {
    try {
      fn()
    } catch (err) {
      log('after commit: %O', err)
    }
  }
  if (!strapi.db.inTransaction()) return safe()
  void strapi.db.transaction(({ onCommit }) => onCommit(safe)).catch((err: unknown) => log('onCommit: %O', err))
}

export function eventData(change: DocumentChange, o: Pick<EventOptions, 'data' | 'actor'>): DocumentEventData {
  const r = (change.result ?? {}) as Record<string, unknown>
  const status = change.action === 'delete' ? null : change.action === 'publish' ? 'published'
    : change.action === 'unpublish' || change.action === 'discardDraft' ? 'draft' : r.publishedAt == null && 'publishedAt' in r ? 'draft' : 'published'
  let data: DocumentEventData = { uid: change.uid, documentId: change.documentId, locale: change.locale, action: change.action, status, changed: change.changed }
  if (o.actor !== false) data.by = change.by
  // The id, even without names: an editor's own saves are not someone else's (the stale warning).
  if (change.by !== null) data.updatedBy = change.by.id
  const updatedAt = r.updatedAt instanceof Date ? r.updatedAt.toISOString() : typeof r.updatedAt === 'string' ? r.updatedAt : undefined
  if (updatedAt !== undefined && change.action !== 'delete') {
    data.updatedAt = updatedAt
    data.revision = Date.parse(updatedAt)
  }
  try {
    data = { ...data, ...o.data?.(change) }
  } catch (err) {
    log('option data threw for %s: %O', change.uid, err)
  }
  return data
}

function announce(rt: KoaRealtime<StrapiUser>, change: DocumentChange, o: EventOptions): void {
  const data = eventData(change, o)
  const type = EVENT_TYPES[change.action]
  for (const topic of [strapiTopic(change.uid), strapiTopic(change.uid, change.documentId)]) {
    try {
      rt.publish(topic, type, data).catch((err: unknown) => log('publish to %s failed: %O', topic, err))
    } catch (err) {
      log('publish to %s refused: %O', topic, err)
    }
  }
}
