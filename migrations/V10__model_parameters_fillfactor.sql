-- Room on every page of model_parameters for the next version of its rows. A worker batch updates
-- most of a model's parameters (63% of 10,000 at 1,000 events of 10 features), and with full
-- pages each update moved its row to another page and added a primary-key entry (0.04% of
-- updates were HOT in `olps bench drain`). With half-full pages most updates stay on their page
-- without a new index entry (52% HOT), which made the bench's bare-SQL drain 39% and the worker
-- 10% faster. The table is one row per parameter, so doubling its size costs little; pages
-- written before this migration follow as their rows are rewritten.
ALTER TABLE model_parameters SET (fillfactor = 50);
