/**
 * cms-realtime: live updates for a Node.js CMS over WebSockets.
 * This entry is framework-free; see `cms-realtime/koa` and `cms-realtime/express`.
 */
export { createRealtime, Realtime, type Binding } from './server/realtime'
export { MemoryBus, type MemoryBusOptions } from './bus/memory'
export { checkUpgrade, type Refusal } from './server/handshake'
export { parseClientFrame, CloseCode, type ClientFrame, type ServerFrame, type ErrorCode } from './protocol/protocol'
export { defaultAuthorize, userId, ENV_ENABLED, DEFAULTS } from './options'
export type { Reply } from './server/http'
export { MemoryCollabStore, type CollabStore, type PresenceMember, type LockHolder, type Acquired } from './collab/store'
export { staleEdit, type Revisioned, type StaleAnswer } from './collab/stale'
export {
  PROTOCOL,
  type RealtimeOptions,
  type RealtimeStats,
  type RefusalReason,
  type ClientConfig,
  type FallbackInfo,
  type Bus,
  type BusEvent,
  type Published,
  type AttachableServer,
  type User,
  type MaybePromise,
  type ConnectionSelector,
  type CollabOptions,
} from './types'
