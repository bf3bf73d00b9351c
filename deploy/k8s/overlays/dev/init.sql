-- The demo source: 200,000 orders, enough for a chunked export over a few workers.
CREATE TABLE public.orders (
    id bigint PRIMARY KEY,
    customer_id integer NOT NULL,
    status text NOT NULL,
    amount numeric(12, 2) NOT NULL,
    created_at timestamptz NOT NULL
);
INSERT INTO public.orders
SELECT g, g % 5000, (ARRAY['new', 'paid', 'shipped', 'returned'])[1 + g % 4],
       round((g % 100000) / 7.0, 2), timestamptz '2026-01-01' + g * interval '1 minute'
FROM generate_series(1, 200000) AS g;
