// cms-realtime in a Strapi 5 app: three lifecycle calls (see the README,
// "Use it in Strapi"). The rest of this file is the example's own setup.
import type { Core } from '@strapi/strapi';
import { RedisBus } from 'cms-realtime/redis';
import { strapiRealtime } from 'cms-realtime/strapi';
import { createClient } from 'redis';

export const live = strapiRealtime({
  contentTypes: ['api::article.article'],
  // Titles are readable by everyone who may read articles; the live page shows them.
  data: ({ result }) => ({ title: (result as { title?: string } | null)?.title }),
  // More than one Strapi node: REDIS_URL=redis://127.0.0.1:6379 on each.
  realtime: process.env.REDIS_URL ? { bus: new RedisBus(createClient({ url: process.env.REDIS_URL })) } : {},
});

export default {
  register({ strapi }: { strapi: Core.Strapi }) {
    live.register({ strapi });
  },

  async bootstrap({ strapi }: { strapi: Core.Strapi }) {
    live.bootstrap({ strapi });
    await createAdmin(strapi);
  },

  async destroy() {
    await live.destroy();
  },
};

/** First start: the admin from STRAPI_ADMIN_EMAIL / STRAPI_ADMIN_PASSWORD (the example's defaults otherwise). */
async function createAdmin(strapi: Core.Strapi): Promise<void> {
  const users = strapi.service('admin::user');
  if ((await users.count()) > 0) return;
  const email = process.env.STRAPI_ADMIN_EMAIL || 'admin@example.com';
  const superAdmin = await strapi.service('admin::role').getSuperAdmin();
  await users.create({
    email,
    firstname: 'Admin',
    lastname: 'Example',
    password: process.env.STRAPI_ADMIN_PASSWORD || 'Admin-pass-1',
    isActive: true,
    registrationToken: null,
    roles: [superAdmin.id],
  });
  strapi.log.info(`cms-realtime example: created the admin ${email}`);
}
