"""The executor: runs a pod's apps in namespaces on the bare host, as spec/ace.md says."""
