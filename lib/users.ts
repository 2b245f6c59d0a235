/**
 * Who a user is, as the library sees it: an id for per-user limits, selectors
 * and `notifications:<id>`, and the secure default for `authorize`. Kept
 * apart so options, sessions and collaboration read it without importing each other.
 */
import type { User } from './types'

/** The id a user is known by for `notifications:<id>`: `user.id`, or the user itself when it is a string or number. */
export function userId(user: User): string | undefined {
  if (typeof user === 'string' || typeof user === 'number') return String(user)
  if (typeof user === 'object' && user !== null && 'id' in user) {
    const id = (user as { id: unknown }).id
    if (typeof id === 'string' || typeof id === 'number') return String(id)
  }
  return undefined
}

const NOTIFICATIONS = 'notifications:'

/** Secure default: personal notification topics belong to their user alone. */
export function defaultAuthorize(user: User, topic: string): boolean {
  if (!topic.startsWith(NOTIFICATIONS)) return true
  const id = userId(user)
  return id !== undefined && topic === NOTIFICATIONS + id
}
