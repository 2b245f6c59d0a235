// The live Content Manager (see the README, "Use it in Strapi"): list views
// update by themselves, and an entry's edit view shows who else has it open,
// a soft lock with "Take over", and a warning when someone saved meanwhile.
import { liveAdmin } from 'cms-realtime/strapi-admin';

const live = liveAdmin();

export default {
  bootstrap(app: Parameters<typeof live.bootstrap>[0]) {
    live.bootstrap(app);
  },
};
