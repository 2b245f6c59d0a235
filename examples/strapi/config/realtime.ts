// cms-realtime's options for this app, per environment (any option but the
// callbacks, which cms-realtime/strapi provides). See the README's options table.
export default ({ env }: { env: { int(name: string, fallback: number): number } }) => ({
  // How often open connections are checked against their Strapi session (sign-out, revoked sessions).
  revalidateMs: env.int('REALTIME_REVALIDATE_MS', 60_000),
});
