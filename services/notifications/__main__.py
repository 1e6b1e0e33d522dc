from services.notifications.main import service
from shared.service import serve

serve(service)
