// A batch's states in words, for its own heading and for the list of recent batches.
export const STATUS_TEXT = {
  queued: "Queued: waiting for a worker",
  running: "Running",
  succeeded: "Done",
  partial: "Done; some items failed",
  failed: "Failed: no item succeeded",
  cancelled: "Cancelled",
};
