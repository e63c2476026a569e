# Failback, step 1 (the seed's Terraform tab): ensure both services exist and are healthy.
# If they were removed from the Terraform state during the disaster, re-import them:
#   terraform import aiven_postgresql.primary PROJECT_NAME/PRIMARY_SERVICE_NAME
#   terraform import aiven_postgresql.recovery PROJECT_NAME/RECOVERY_SERVICE_NAME

resource "aiven_postgresql" "primary" {
  project      = var.project_name
  service_name = var.primary_service_name
  plan         = var.service_plan
  cloud_name   = var.primary_cloud_region
}

resource "aiven_postgresql" "recovery" {
  project      = var.project_name
  service_name = var.recovery_service_name
  plan         = var.service_plan
  cloud_name   = var.recovery_cloud_region
}
