/** Presence and soft locks, as options.ts resolves them for collab.ts. */
import type { LockHolder } from '../client/wire'
import type { MaybePromise, User } from '../types'

export interface CollabSettings {
  leaveGraceMs: number
  lockGraceMs: number
  leaseMs: number
  canLock: ((user: User, key: string) => MaybePromise<boolean>) | undefined
  canTakeOver: ((user: User, key: string, holder: LockHolder) => MaybePromise<boolean>) | undefined
  profile: ((user: User) => unknown) | undefined
}

/** What others see of `user` (`profile`); a throw shows nothing and is counted. */
export function profileOf(settings: CollabSettings, user: User, onError: (where: string, err: unknown) => void): unknown {
  if (settings.profile === undefined) return undefined
  try {
    return settings.profile(user)
  } catch (err) {
    onError('profile', err)
    return undefined
  }
}

/** A yes/no hook of the app (`canLock`, `canTakeOver`): anything but `true`, or a throw, is no. */
export async function hook(onError: (where: string, err: unknown) => void, where: string, fn: () => MaybePromise<boolean>): Promise<boolean> {
  try {
    return (await fn()) === true
  } catch (err) {
    onError(where, err)
    return false
  }
}
