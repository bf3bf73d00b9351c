-- Orders of the last 30 days with their customer; read at load time by examples/query_file.yaml.
SELECT o.id, o.placed_at, o.total, c.email
FROM public.orders AS o
JOIN public.customers AS c ON c.id = o.customer_id
WHERE o.placed_at >= now() - interval '30 days'
