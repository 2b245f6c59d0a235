/**
 * A tab's presence and lock requests, the same frames whichever transport
 * they came on (a WebSocket message, or `POST <path>/collab` from a tab on
 * SSE or long polling): one dispatch, so every transport gets the same
 * checks, graces and answers. Answers go to the participant's own transport.
 */
import debug from 'debug'
import type { ClientFrame } from '../client/wire'
import type { Collab, Participant } from './collab'

const log = debug('cms-realtime')

export type CollabFrame = Extract<ClientFrame, { op: 'presence' | 'leave' | 'lock' | 'unlock' }>

export function isCollabFrame(f: ClientFrame): f is CollabFrame {
  return f.op === 'presence' || f.op === 'leave' || f.op === 'lock' || f.op === 'unlock'
}

/** Run `frame` for `p`; a failure (the store unreachable) is told to the tab as `unavailable`. Never throws. */
export function collabOp(c: Collab, p: Participant, frame: CollabFrame): void {
  const done = frame.op === 'presence' ? c.presence(p, frame.topic, frame.tab, frame.meta)
    : frame.op === 'leave' ? c.leave(p, frame.topic)
      : frame.op === 'lock' ? c.lock(p, frame.key, frame.tab, frame.takeover === true)
        : c.unlock(p, frame.key)
  done.catch((err: unknown) => {
    log('%s failed: %O', frame.op, err)
    if (p.open) p.send({ op: 'error', code: 'unavailable', message: `${frame.op} failed`, topic: 'topic' in frame ? frame.topic : frame.key })
  })
}
