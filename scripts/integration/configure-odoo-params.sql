-- Sets the IPAI webhook's system parameters in an Odoo database: ipai.webhook.url and
-- ipai.webhook.secret. Idempotent. The values come from the environment (psql runs printenv),
-- so the secret is on no command line and never printed:
--
--   IPAI_WEBHOOK_URL=https://bus.example.ph/functions/v1/odoo-webhook \
--   IPAI_WEBHOOK_SECRET=... psql "$ODOO_DATABASE_URL" -f configure-odoo-params.sql
--
-- configure-odoo-params.sh wraps this with argument handling.
\set ON_ERROR_STOP on
\set QUIET on
\set ipai_webhook_url `printenv IPAI_WEBHOOK_URL`
\set ipai_webhook_secret `printenv IPAI_WEBHOOK_SECRET`

begin;
-- An unset variable arrives empty, which the checks below refuse.
select set_config('ipai.configure_url', :'ipai_webhook_url', true),
       set_config('ipai.configure_secret', :'ipai_webhook_secret', true) \gset ignored_

do $$
declare
    v_url text := current_setting('ipai.configure_url');
    v_secret text := current_setting('ipai.configure_secret');
begin
    if to_regclass('ir_config_parameter') is null then
        raise exception 'configure-odoo-params: this database has no ir_config_parameter table; '
                        'point it at an Odoo database';
    end if;
    if v_url !~ '^https?://[^\s/]+(/\S*)?$' then
        raise exception 'configure-odoo-params: IPAI_WEBHOOK_URL must be an http(s) URL';
    end if;
    if length(v_secret) < 16 or v_secret ~ '[\s,]' then
        raise exception 'configure-odoo-params: IPAI_WEBHOOK_SECRET must be at least 16 '
                        'characters, without spaces or commas';
    end if;
end;
$$;

insert into ir_config_parameter (key, value, create_uid, create_date, write_uid, write_date)
select p.key, p.value, 1, now() at time zone 'utc', 1, now() at time zone 'utc'
  from (values ('ipai.webhook.url', current_setting('ipai.configure_url')),
               ('ipai.webhook.secret', current_setting('ipai.configure_secret'))) as p(key, value)
on conflict (key) do update
   set value = excluded.value, write_uid = 1, write_date = excluded.write_date
 where ir_config_parameter.value is distinct from excluded.value;

-- Running Odoo workers cache system parameters: tell them to reload (Odoo 18's cache signal).
select case when to_regclass('base_cache_signaling_default') is not null
            then nextval('base_cache_signaling_default') end \gset ignored_
commit;

\echo configure-odoo-params: ipai.webhook.url and ipai.webhook.secret are set (secret not shown)
