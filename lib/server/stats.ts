/** `rt.stats()`: the counters, the hub, the diagnoses and the bus's own figures, as one plain object. */
import type { Counters } from '../counters'
import type { Hub } from '../delivery/hub'
import type { Bus, RealtimeStats } from '../types'
import type { Diagnostics } from './diagnostics'

export function statsOf(
  c: Counters, hub: Hub, d: Diagnostics, bus: Bus, now: { connections: number; streams: number; polls: number; webSocketEnabled: boolean },
): RealtimeStats {
  return {
    connections: now.connections,
    subscriptions: hub.subscriptions,
    topics: hub.topicCount,
    eventsPublished: c.eventsPublished,
    eventsDelivered: c.eventsDelivered,
    slowConsumersClosed: c.slowConsumersClosed,
    drops: c.drops,
    protocolErrors: c.protocolErrors,
    refusals: { ...c.refusals },
    strippedUpgrades: c.strippedUpgrades,
    webSocketEnabled: now.webSocketEnabled,
    fallbackStreams: now.streams,
    transports: { websocket: now.connections, sse: now.streams, poll: now.polls },
    stepDowns: { ...d.stepDowns },
    diagnoses: { ...d.reports },
    diagnosesUnconfirmed: { ...d.unconfirmed },
    diagnosesRejected: d.rejected,
    errors: c.errors,
    sessionsEnded: c.sessionsEnded,
    subscriptionsRevoked: c.subscriptionsRevoked,
    recovery: { recovered: c.recovered, resynced: c.resynced },
    ...(bus.stats === undefined ? {} : { bus: bus.stats() }),
  }
}
