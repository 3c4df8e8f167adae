-- Names are unique so that seeding can use ON CONFLICT and stay idempotent.
CREATE UNIQUE INDEX items_name_key ON items (name);
