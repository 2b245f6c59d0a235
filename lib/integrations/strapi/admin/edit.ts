/**
 * The Content Manager's edit view, live, in a side panel
 * (`addEditViewSidePanel`):
 *
 * - who else has this entry open (presence: one entry per tab, shown per
 *   admin, with the tab count);
 * - a soft lock, taken when the entry is opened (as Strapi's record-locking
 *   plugin and Payload's `lockDocuments` do): the others see the entry
 *   read-only, with "Take over", and the holder is told at once when it is
 *   taken;
 * - a stale warning when someone else saves the entry after it was opened
 *   ("Ben changed title 12 s ago"), with "Reload" (the form takes the new
 *   version) or "Keep mine".
 *
 * The same presence, locks and `watchRevision` any cms-realtime page uses;
 * nothing here is a second implementation.
 */
import { adminApi } from '@strapi/strapi/admin'
import { Avatar, Box, Button, Flex, Typography } from '@strapi/design-system'
import { createElement as h, useEffect, useRef, useState, useSyncExternalStore, type ReactElement } from 'react'
import { useDispatch } from 'react-redux'
import { watchRevision, type StaleChange } from '../../../client/stale'
import type { HeldLock, LockHolder, Presence, PresenceMember } from '../../../client/types'
import { strapiTopic } from '../topics'
import { tags, useLive } from './live'

/** What the server's `collab.profile` says of an admin (see the server side, `profileOf`). */
interface Profile { name?: string; initials?: string }

/** The props the Content Manager gives side panels and document actions. */
export interface EditViewProps {
  model: string
  documentId?: string
  collectionType?: string
  document?: { updatedAt?: string | null } & Record<string, unknown>
  activeTab?: 'draft' | 'published' | null
}

/**
 * Who holds each open document's lock when it is not this tab: the
 * document actions (Save, Publish…) read it to be disabled. A tiny store,
 * since the panel and the actions are separate React trees' components.
 */
const lockedBy = new Map<string, LockHolder>()
const listeners = new Set<() => void>()
function setLockedBy(topic: string, holder: LockHolder | null): void {
  if ((lockedBy.get(topic) ?? null) === holder) return
  if (holder === null) lockedBy.delete(topic)
  else lockedBy.set(topic, holder)
  for (const l of listeners) l()
}
function subscribeLocks(l: () => void): () => void {
  listeners.add(l)
  return () => void listeners.delete(l)
}
function useLockedBy(topic: string | undefined): LockHolder | undefined {
  return useSyncExternalStore(subscribeLocks, () => (topic === undefined ? undefined : lockedBy.get(topic)))
}

const nameOf = (info: unknown): string => (info as Profile | undefined)?.name ?? 'Someone'
const initialsOf = (info: unknown): string => (info as Profile | undefined)?.initials ?? '?'

/** The side panel: `{ title, content }`, or nothing while an entry is being created. */
export function LivePanel(props: EditViewProps): { title: string; content: ReactElement } | null {
  if (props.documentId === undefined) return null
  return { title: 'Live', content: h(LiveEdit, { key: `${props.model}:${props.documentId}`, ...props, documentId: props.documentId }) }
}

function LiveEdit({ model, documentId, document }: EditViewProps & { documentId: string }): ReactElement {
  const { rt, self, state } = useLive()
  const dispatch = useDispatch()
  const topic = strapiTopic(model, documentId)
  const [presence, setPresence] = useState<Presence | undefined>(undefined)
  const [members, setMembers] = useState<readonly PresenceMember[]>([])
  const [holder, setHolder] = useState<LockHolder | null>(null)
  const [lostTo, setLostTo] = useState<LockHolder | null>(null)
  const [stale, setStale] = useState<StaleChange | null>(null)
  const held = useRef<HeldLock | undefined>(undefined)
  const root = useRef<HTMLDivElement | null>(null)
  const [, tick] = useState(0)

  /**
   * The server refused presence on the document's topic (its type is not in
   * `contentTypes`, or no read permission). A refusal after joining is a
   * lock's (an admin who may read but not edit), not this.
   */
  const [refused, setRefused] = useState(false)
  const joined = useRef(false)
  useEffect(() => rt.on('error', (e) => { if (e.topic === topic && e.code === 'forbidden' && !joined.current) setRefused(true) }), [rt, topic])
  // Presence on the document's topic; the lock on the same key.
  useEffect(() => {
    const p = rt.presence(topic, { editing: true })
    setPresence(p)
    const off = p.on('change', (now) => {
      joined.current = true
      setMembers(now.members)
      setHolder(now.lock)
    })
    return () => {
      off()
      p.leave()
    }
  }, [rt, topic])

  // The view may be gone by the time a lock is granted: such a lock is given back at once.
  const mounted = useRef(true)
  useEffect(() => {
    mounted.current = true
    return () => { mounted.current = false }
  }, [])
  const take = async (takeover: boolean): Promise<void> => {
    try {
      const r = await rt.lock(topic, { takeover })
      if (!r.held) return
      if (!mounted.current) return r.release()
      held.current = r
      setLostTo(null)
      r.on('lost', ({ by }) => {
        held.current = undefined
        setLostTo(by ?? null)
      })
    } catch {
      // Not connected yet, or refused: the panel shows the holder; "Take over" retries.
    }
  }
  // Ask for the lock once the channel is live, and whenever it is free again
  // (its holder left, or their tab died and the grace ran out). After a
  // reconnect the client reclaims a lock it held by itself.
  const free = presence !== undefined && holder === null
  useEffect(() => {
    if ((state === 'live' || state === 'fallback') && held.current === undefined && (free || lostTo === null)) void take(false)
  }, [state, topic, free]) // eslint-disable-line react-hooks/exhaustive-deps
  useEffect(() => () => { held.current?.release(); held.current = undefined }, [topic])

  // Someone else saved this locale of the entry since this editor opened it.
  const opened = document?.updatedAt == null ? undefined : Date.parse(document.updatedAt)
  const locale = typeof document?.locale === 'string' ? document.locale : null
  useEffect(() => {
    if (opened === undefined || Number.isNaN(opened)) return
    const watch = watchRevision(rt, topic, { revision: opened, self, match: (d) => (d.locale ?? null) === locale }, setStale)
    return () => watch.stop()
  }, [rt, topic, opened, self, locale])
  // "12 s ago" stays true.
  useEffect(() => {
    if (stale === null) return
    const t = setInterval(() => tick((n) => n + 1), 5000)
    return () => clearInterval(t)
  }, [stale])

  const mine = holder !== null && presence?.tab !== undefined && holder.tab === presence.tab
  const other = holder !== null && !mine ? holder : null
  useEffect(() => {
    setLockedBy(topic, other)
    return () => setLockedBy(topic, null)
  }, [topic, other])
  // Read-only while another tab holds the lock: the fields are out of reach
  // (see `fieldsOf`), and Strapi's save and publish shortcuts, which check
  // their own state and not the actions', are stopped before they run.
  useEffect(() => {
    if (other === null) return
    const fields = fieldsOf(root.current)
    fields?.setAttribute('inert', '')
    const shortcut = (e: KeyboardEvent): void => {
      if ((e.ctrlKey || e.metaKey) && (e.key === 's' || e.key === 'S' || e.key === 'Enter')) {
        e.preventDefault()
        e.stopImmediatePropagation()
      }
    }
    window.addEventListener('keydown', shortcut, true)
    return () => {
      fields?.removeAttribute('inert')
      window.removeEventListener('keydown', shortcut, true)
    }
  }, [other])

  const others = byUser(members.filter((m) => m.tab !== presence?.tab))
  if (refused) return h(Typography, { variant: 'pi', textColor: 'neutral600', 'data-cms-realtime': 'edit', 'data-state': 'refused' }, 'Not live for this content type.')
  return h(Flex, { ref: root, direction: 'column', alignItems: 'stretch', gap: 3, 'data-cms-realtime': 'edit', 'data-state': state },
    h(Typography, { variant: 'pi', textColor: state === 'live' || state === 'fallback' ? 'success600' : 'neutral600' },
      state === 'live' || state === 'fallback' ? '● Live' : '○ Not live'),
    others.length === 0
      ? h(Typography, { variant: 'pi', textColor: 'neutral600', 'data-presence': 'alone' }, 'Nobody else has this entry open')
      : h(Flex, { direction: 'column', alignItems: 'stretch', gap: 2, 'data-presence': 'others' },
        h(Typography, { variant: 'sigma', textColor: 'neutral600' }, 'Also here'),
        ...others.map((o) => h(Flex, { key: o.user, gap: 2, 'data-member': o.name },
          h(Avatar.Item, { delayMs: 0, fallback: o.initials }),
          h(Typography, { variant: 'omega' }, o.tabs > 1 ? `${o.name} (${o.tabs} tabs)` : o.name)))),
    other !== null
      ? h(Box, { background: 'warning100', padding: 3, hasRadius: true, 'data-lock': 'other' },
        h(Typography, { variant: 'omega', tag: 'p' }, `${nameOf(other.info)} is editing this entry: read-only for you.`),
        h(Box, { paddingTop: 2 }, h(Button, { variant: 'secondary', size: 'S', onClick: () => void take(true) }, 'Take over')))
      : mine
        ? h(Typography, { variant: 'pi', textColor: 'neutral600', 'data-lock': 'mine' }, 'You are editing: others see this entry read-only.')
        : null,
    lostTo !== null && !mine
      ? h(Box, { background: 'danger100', padding: 3, hasRadius: true, 'data-lock': 'lost' },
        h(Typography, { variant: 'omega', tag: 'p' }, `${nameOf(lostTo.info)} took over: your unsaved changes were not saved.`))
      : null,
    stale !== null
      ? h(Box, { background: 'warning100', padding: 3, hasRadius: true, 'data-stale': 'true' },
        h(Typography, { variant: 'omega', tag: 'p' }, staleText(stale)),
        h(Flex, { gap: 2, paddingTop: 2 },
          h(Button, {
            variant: 'secondary', size: 'S',
            onClick: () => {
              // The form resets to the stored version (the Content Manager's own refetch).
              dispatch(adminApi.util.invalidateTags([tags.document(model, documentId), tags.list(model)]))
              setStale(null)
            },
          }, 'Reload'),
          h(Button, { variant: 'tertiary', size: 'S', onClick: () => setStale(null) }, 'Keep mine')))
      : null)
}

/** "Ben changed title 12 s ago — reload or keep yours." */
export function staleText(stale: StaleChange, now = Date.now()): string {
  const d = stale.event.data as { by?: { name?: string } | null; changed?: string[]; updatedAt?: string; action?: string }
  const who = d.by?.name ?? 'Someone'
  const what = d.action === 'update' && Array.isArray(d.changed) && d.changed.length > 0 ? `changed ${d.changed.join(', ')}` : 'changed this entry'
  const at = d.updatedAt === undefined ? stale.revision : Date.parse(d.updatedAt)
  const s = Math.max(0, Math.round((now - at) / 1000))
  const ago = s < 60 ? `${s} s ago` : `${Math.round(s / 60)} min ago`
  return `${who} ${what} ${ago} — reload or keep yours.`
}

/** Members per admin (one per tab on the wire), with their tab count. */
function byUser(members: readonly PresenceMember[]): Array<{ user: string; name: string; initials: string; tabs: number }> {
  const out = new Map<string, { user: string; name: string; initials: string; tabs: number }>()
  for (const m of members) {
    const o = out.get(m.user)
    if (o !== undefined) o.tabs++
    else out.set(m.user, { user: m.user, name: nameOf(m.info), initials: initialsOf(m.info), tabs: 1 })
  }
  return [...out.values()]
}

/**
 * The edit view's field column, next to the side panels. Strapi has no API
 * to make the form read-only from outside (the page sets `disabled` for the
 * published tab only), so a held lock makes the fields `inert`: not
 * focusable, not editable, as the HTML standard defines it. The panels stay
 * usable. The document actions are disabled through Strapi's own API
 * (`lockActions`).
 */
function fieldsOf(panel: HTMLElement | null): Element | undefined {
  const form = panel?.closest('form')
  // Up from the panel to the form: the first sibling that holds named fields is the field column.
  for (let a: Element | null | undefined = panel?.closest('aside'); a != null && a !== form; a = a.parentElement) {
    for (const sibling of a.parentElement?.children ?? []) {
      if (sibling !== a && sibling.querySelector('input[name], textarea[name], select[name], [contenteditable]') !== null) return sibling
    }
  }
  return undefined
}

/** A document action (Save, Publish…) as the Content Manager defines one. */
type DocumentAction = ((props: EditViewProps) => ({ disabled?: boolean } & Record<string, unknown>) | null) & Record<string, unknown>

/** `addDocumentAction`'s reducer: every action disabled while another tab holds the entry's lock. */
export function lockActions(actions: DocumentAction[]): DocumentAction[] {
  return actions.map((action) => {
    const locked = (props: EditViewProps): ReturnType<DocumentAction> => {
      const d = action(props)
      const holder = useLockedBy(props.documentId === undefined ? undefined : strapiTopic(props.model, props.documentId))
      return d === null || holder === undefined ? d : { ...d, disabled: true }
    }
    // `type` and `position` are the action's identity and where it shows.
    return Object.assign(locked, action)
  })
}
