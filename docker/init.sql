-- Sample table for docker/compose.yaml.
create table if not exists public.orders (
    id bigserial primary key,
    amount numeric(10,2) not null,
    status text not null default 'new',
    updated_at timestamptz not null default now()
);
insert into public.orders (amount) select (random() * 100)::numeric(10,2) from generate_series(1, 1000);
