/**
 * cms-realtime/client: the public browser client. ESM, no Node built-ins.
 *
 *   const rt = createClient({ configUrl: '/realtime/config' })
 *   const off = rt.subscribe('project:42', (event) => render(event))
 *   rt.on('state', (s) => banner(s))
 */
export { createClient } from './create'
export {
  type RealtimeClient,
  type ClientOptions,
  type ClientState,
  type ClientEvents,
  type RealtimeEvent,
  type Diagnosis,
  type WebSocketLike,
  type WebSocketCtor,
  type EventSourceLike,
  type EventSourceCtor,
  type FetchLike,
  type Presence,
  type HeldLock,
  type RefusedLock,
  type PresenceMember,
  type LockHolder,
} from './client'
export { watchRevision, type RevisionWatch, type StaleChange } from './stale'
export { backoff, BACKOFF, type BackoffOptions } from './backoff'
export { encodeCursors, decodeCursors } from './cursor-vector'
export { PROTOCOL, DIAGNOSIS_CAUSES, type DiagnosisCause, type WireConfig, type WireFrame, type HandshakeSeen } from './wire'
