// cms-realtime's options for this app, per environment (any option but the
// callbacks, which cms-realtime/strapi provides). See the README's options table.
export default ({ env }: { env: { int(name: string, fallback: number): number } }) => ({
  // The backstop behind Strapi's lifecycles (which end a blocked user's or a
  // signed-out device's connections at once): how often open connections are
  // checked against their Strapi session and user.
  revalidateMs: env.int('REALTIME_REVALIDATE_MS', 60_000),
  collab: {
    // How long a tab that vanished (closed or crashed) keeps an entry's lock, to take it back on reload.
    lockGraceMs: env.int('REALTIME_LOCK_GRACE_MS', 15_000),
    // How long the locks of a Strapi node that died (no one left to end them) outlive it:
    // as long as a tab's grace. Each node renews its entries in Redis every third of it.
    leaseMs: env.int('REALTIME_LOCK_LEASE_MS', 15_000),
  },
});
