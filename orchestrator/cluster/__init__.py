"""Where things run and live: the Ray session, the processes of a run, the sweep folder's lock, shared
storage (local folder or S3), and cluster files for ``ray up``."""
