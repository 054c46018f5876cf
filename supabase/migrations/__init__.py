"""The bus's SQL migrations, shipped inside the ipai_bus_lib wheel as ipai_bus_lib.migrations.

The Supabase CLI reads the *.sql files beside this one and skips this file.
"""
