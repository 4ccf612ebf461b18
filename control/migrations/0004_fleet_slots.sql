-- A replica keeps its slot across restarts: the new process of a `[fleet] id` registers
-- beside the old one with the slot that id holds (the cancel keys of clients that move
-- from the old process to the new one name it), so two live rows of one id share a
-- slot for the length of a restart. Slots stay unique among ids (register_replica).
ALTER TABLE replicas DROP CONSTRAINT replicas_slot_key;
