# Defaults match a pgcrdr started with its default settings (`make run`): the default project,
# its two local regions and a one-node plan. Override with -var NAME=VALUE or TF_VAR_NAME.

variable "project_name" {
  description = "Project holding both services"
  type        = string
  default     = "pgcrdr"
}

variable "primary_service_name" {
  description = "The primary service (active in normal operation)"
  type        = string
  default     = "pg-primary"
}

variable "recovery_service_name" {
  description = "The recovery service (the passive copy in another region)"
  type        = string
  default     = "pg-primary-dr"
}

variable "service_plan" {
  description = "Plan of both services: startup-4/8 (1 node), business-4/8 (2 nodes), premium-4/8 (3 nodes)"
  type        = string
  default     = "startup-4"
}

variable "primary_cloud_region" {
  description = "Cloud (region) of the primary service (`avn cloud list`)"
  type        = string
  default     = "local-europe-west1"
}

variable "recovery_cloud_region" {
  description = "Cloud (region) of the recovery service: another region than the primary's"
  type        = string
  default     = "local-us-east1"
}
