"""Adapters that feed training frameworks from the service, one request per batch.

- tensorprep.adapters.tensorflow.dataset: a tf.data.Dataset of processed batches, streamed with
  requests in flight and prefetched.
- tensorprep.adapters.torch.StreamingDataset: a torch IterableDataset doing the same;
  tensorprep.adapters.torch.Collate: a DataLoader collate_fn that sends each collated batch.

Neither calls back into Python per sample: Python runs once per batch, the per-sample work runs on
the server. Each imports its framework only when used.
"""
