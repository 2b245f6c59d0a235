import type { Core } from '@strapi/strapi';

// PostgreSQL only: DATABASE_URL, or the local server that run.mjs sets up.
const config = ({ env }: Core.Config.Shared.ConfigParams): Core.Config.Database<'postgres'> => {
  const url = new URL(env('DATABASE_URL', 'postgres://postgres@127.0.0.1:5432/cms_realtime_strapi'));
  return {
    connection: {
      client: 'postgres',
      connection: {
        host: url.hostname,
        port: Number(url.port || 5432),
        database: decodeURIComponent(url.pathname.slice(1)),
        user: decodeURIComponent(url.username),
        password: decodeURIComponent(url.password),
        ssl: env.bool('DATABASE_SSL', false),
      },
      pool: { min: 0, max: env.int('DATABASE_POOL_MAX', 10) },
    },
  };
};

export default config;
