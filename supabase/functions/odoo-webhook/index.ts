// Supabase Edge Function entry point: `supabase functions deploy odoo-webhook --no-verify-jwt`.
import { handleRequest } from "./handler.ts";

Deno.serve(handleRequest);
