/** What the core counts for `rt.stats()`: one mutable record every transport and layer adds to. */
export interface Counters {
  eventsPublished: number
  eventsDelivered: number
  slowConsumersClosed: number
  drops: number
  protocolErrors: number
  strippedUpgrades: number
  refusals: Record<string, number>
  errors: number
  sessionsEnded: number
  subscriptionsRevoked: number
  /** Subscriptions that came with a cursor: resumed from history, or told to resync. */
  recovered: number
  resynced: number
}
