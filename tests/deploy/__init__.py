"""Deploy tests: the Helm chart rendered and validated offline, the images linted, the pod run as a process."""
