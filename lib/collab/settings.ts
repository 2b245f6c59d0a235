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
