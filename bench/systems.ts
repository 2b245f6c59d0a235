/** The systems under test, as both processes see them, and the event every one of them sends. */
import { PROTOCOL } from '../lib/types'
import { clientFrame, type WireOptions } from './wire'

export const SYSTEMS = ['cms-realtime', 'ws', 'socket.io'] as const
export type System = (typeof SYSTEMS)[number]

/** The payload of event `seq`: ~200 bytes of JSON, like a CMS "entry updated" notice. */
export function eventData(seq: number): { id: string; type: string; title: string; updatedBy: string; updatedAt: string; fields: string[]; seq: number } {
  return {
    id: `entry-${100000 + (seq % 900000)}`,
    type: 'article',
    title: 'Spring launch: what changed in the catalogue this week',
    updatedBy: 'editor@example.com',
    updatedAt: '2025-01-01T12:00:00.000Z',
    fields: ['title', 'body', 'slug'],
    seq,
  }
}

/** How a client of `system` connects and subscribes to `topics`. */
/** `frames`: cms-realtime subscribing with `subscribe` frames after the 101 (before handshake topics), for comparison. */
export function wireFor(system: System, topics: string[], frames = false): Omit<WireOptions, 'port' | 'onEvent' | 'onClose'> {
  const list = encodeURIComponent(topics.join(','))
  switch (system) {
    case 'cms-realtime':
      if (frames) {
        return {
          path: '/realtime',
          protocol: PROTOCOL,
          hello: topics.map((topic) => clientFrame(JSON.stringify({ op: 'subscribe', topic }))),
          ready: { prefix: '{"op":"subscribed"', count: topics.length },
        }
      }
      // The topics ride on the handshake, as the browser client sends them: no round trip.
      return {
        path: `/realtime?topics=${list}`,
        protocol: PROTOCOL,
        hello: [],
        ready: { prefix: '{"op":"subscribed"', count: topics.length },
      }
    case 'ws':
      return { path: `/?topics=${list}`, hello: [], ready: null }
    case 'socket.io':
      return {
        path: `/socket.io/?EIO=4&transport=websocket&topics=${list}`,
        hello: [clientFrame('40')],
        ready: { prefix: '40', count: 1 },
        ping: { ping: '2', pong: clientFrame('3') },
      }
  }
}
